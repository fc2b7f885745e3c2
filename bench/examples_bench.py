"""Public examples benchmark (issue J): what showing a harness the train examples costs per episode.

    python bench/examples_bench.py [--data LawBench/3-3.json] [--episodes 40]

With `--data`, the examples are LawBench 3-3's 300 train cases (about 500 KB of JSONL);
without, 300 synthetic examples of the same size. Runs a trivial harness in both sandboxes,
alternating so all variants see the same machine load: without examples, with the file
(leaving out a dev sample, which drops nothing, and a train sample, which re-joins the
lines), and with a harness that parses every example. Prints the median and p90 wall time
of each, and the host-side cost of building the file once per episode.

Target: passing the file costs under 5 ms per episode in either sandbox.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sia.harness.sandbox import ISOLATIONS, Isolation, run_episode
from sia.tasks.loader import Task, load_task

PLAIN = "def solve(sample, model):\n    return 'x'\n"
PARSING = ("import json, os\n\ndef solve(sample, model):\n    path = os.environ.get('SIA_TRAIN_EXAMPLES')\n"
           "    rows = [json.loads(line) for line in open(path, encoding='utf-8')] if path else []\n"
           "    return str(len(rows))\n")


def synthetic_task(root: Path) -> Path:
    """300 train cases of about 1.6 KB each (LawBench's size), 20 dev, 20 test."""
    import json

    (root / "public").mkdir(parents=True)
    (root / "private").mkdir()
    (root / "task.toml").write_text('name = "examples-bench"\ndescription = "d"\n[reward]\nkind = "binary"\n')
    (root / "evaluator.py").write_text("def reward(sample, prediction, label):\n    return 0.0\n")
    splits = {"train": ("public/train.jsonl", 300), "dev": ("public/dev.jsonl", 20),
              "test": ("private/test.jsonl", 20)}
    labels = []
    for split, (rel, count) in splits.items():
        rows = [{"id": f"{split}-{i}", "question": f"case {i} " + "事实描述" * 130} for i in range(count)]
        (root / rel).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        labels += [{"id": r["id"], "label": [f"charge {i % 7}"]} for i, r in enumerate(rows)]
    (root / "private/labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return root


def timed(task: Task, isolation: Isolation, source: str, without: str | None, sample: dict[str, Any]) -> float:
    started = time.perf_counter()
    examples = task.public_examples_jsonl(without=without) if without is not None else None
    outcome = run_episode(source, sample, model_socket=None, isolation=isolation, examples=examples)
    if outcome.status != "ok":
        raise SystemExit(f"{isolation}: the bench episode failed: {outcome}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="LawBench's data/zero_shot/3-3.json")
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        task = (load_task("lawbench", data=args.data, cache=Path(scratch)) if args.data
                else load_task(synthetic_task(Path(scratch) / "task")))
        sample = task.sample(task.ids("dev")[0])
        train_id = task.ids("train")[len(task.ids("train")) // 2]
        print(f"{len(task.public_examples())} examples, {len(task.public_examples_jsonl())} bytes of JSONL")
        started = time.perf_counter()
        for _ in range(1000):
            task.public_examples_jsonl(without=train_id)
        print(f"the file less one train example: {(time.perf_counter() - started):.3f} ms per episode")
        variants = {"no examples": (PLAIN, None), "examples (dev sample)": (PLAIN, sample["id"]),
                    "examples (train sample)": (PLAIN, train_id), "harness parses them": (PARSING, sample["id"])}
        for isolation in ISOLATIONS:
            times: dict[str, list[float]] = {name: [] for name in variants}
            for index in range(args.episodes + 2):
                for name, (source, without) in variants.items():
                    took = timed(task, isolation, source, without, sample)
                    if index >= 2:
                        times[name].append(took)
            for name, values in times.items():
                ordered = sorted(values)
                print(f"{isolation:<8} {name:<24} median {1000 * statistics.median(values):6.1f} ms  "
                      f"p90 {1000 * ordered[int(0.9 * (len(ordered) - 1))]:6.1f} ms")


if __name__ == "__main__":
    main()
