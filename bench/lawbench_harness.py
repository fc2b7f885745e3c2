"""How far the template harness's prompt optimizers take LawBench 3-3, and how much of it is the model.

    python bench/lawbench_harness.py knn [--seeds 5] [--neighbours 1 3 5 10]
    python bench/lawbench_harness.py loop [--seeds 5] [--max-gen 4]

`knn`: the optimizer harness (candidates = the nearest training examples' labels, fallback =
their similarity-weighted vote) run in-process on every dev and test case of the lawbench
task's split for each seed, with a model that never answers: what the nearest-neighbour
vote scores alone, without any model help. The public training examples are written as the
task hands them to a harness (SIA_TRAIN_EXAMPLES: the train split's public fields without
the options, plus the label); dev and test labels are only used to score. LawBench's
official F1 (`sia.tasks.lawbench.score`).

`loop`: `sia run --task lawbench --mode H` offline (built-in policy, tiny model) per seed
in a fresh home; per generation its dev F1, the decision taken and why, then the held-out
test F1 of the final answer and the run's wall time. Needs the task's public training
examples in the sandbox (`public_labels`, SIA_TRAIN_EXAMPLES).

Writes bench/results/lawbench_harness_<mode>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sia.agents.template import Knobs, render
from sia.tasks.lawbench import (
    Case,
    aggregate,
    load_cases,
    load_charge_list,
    score,
    split_cases,
)
from sia.tasks.loader import BUNDLED_ROOT

DATA = Path("/work/shared/data/lawbench/3-3.json")
OPTIONS_FILE = Path(__file__).resolve().parents[1] / "sia" / "tasks" / "bundled" / "lawbench" / "charges.json"
RESULTS = Path(__file__).resolve().parent / "results"


class Silent:
    """A model that never names anything: the harness answers by its fallback alone."""

    def complete(self, prompt: str, *, n: int = 1, **params: Any) -> str | list[str]:
        return "" if n == 1 else [""] * n


def public_sample(case: Case, options: Sequence[str]) -> dict[str, Any]:
    return {"id": case.case_id, "instruction": case.instruction, "question": case.question,
            "options": list(options)}


def write_examples(train: Sequence[Case], path: Path) -> None:
    path.write_text("".join(json.dumps({"id": c.case_id, "instruction": c.instruction, "question": c.question,
                                        "label": list(c.charges)}, ensure_ascii=False, sort_keys=True) + "\n"
                            for c in train), encoding="utf-8")


def harness_namespace(knobs: Knobs) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(render(knobs), "harness", "exec"), namespace)  # noqa: S102 - the harness sia renders itself
    return namespace


def knn_answers(seed: int, neighbours: Sequence[int], cases: list[Case],
                options: Sequence[str], overlaps: Sequence[float] = (0.0,)) -> dict[str, dict[str, list[str]]]:
    """Per neighbour count (and OVERLAP weight, keyed "k/w" when it is not 0), the harness's
    answers to every dev and test case with a silent model.

    The harness ranks the training examples once per case (its `nearest`, as `solve` calls it)
    and votes for each count (its `vote`); `solve` itself is checked to give the same answer
    on the first cases of each split, for the largest count.
    """
    train, dev, test = split_cases(cases, seed=seed, dev_fraction=0.2, test_fraction=0.2)
    knobs = Knobs(extract="option", fallback="nearest", neighbours=max(neighbours), candidates="knn",
                  prompt_chars=448)
    harness = harness_namespace(knobs)
    answers: dict[str, dict[str, list[str]]] = {key(k, w): {} for k in neighbours for w in overlaps}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        write_examples(train, path)
        os.environ["SIA_TRAIN_EXAMPLES"] = str(path)
        try:
            examples = harness["load_examples"]()
            for split, chosen in (("dev", dev), ("test", test)):
                ranked = [harness["nearest"](public_sample(c, options), examples, max(neighbours)) for c in chosen]
                idf = harness["rarity"](examples)
                for k in neighbours:
                    votes = [harness["vote"](r[:k]) for r in ranked]
                    for w in overlaps:
                        harness["OVERLAP"] = w
                        answers[key(k, w)][split] = [
                            next(iter(harness["reread"](v, harness["input_text"](public_sample(c, options)),
                                                        idf) if w else v)) for v, c in zip(votes, chosen)]
                harness["OVERLAP"] = 0.0
                for case, answer in list(zip(chosen, answers[str(max(neighbours))][split]))[:3]:
                    assert harness["solve"](public_sample(case, options), Silent()) == answer
        finally:
            del os.environ["SIA_TRAIN_EXAMPLES"]
    return answers


def key(neighbours: int, overlap: float) -> str:
    return f"{neighbours}/{overlap:g}" if overlap else str(neighbours)


def run_knn(args: argparse.Namespace) -> dict[str, Any]:
    cases, options = load_cases(args.data), load_charge_list(OPTIONS_FILE)
    splits = {seed: split_cases(cases, seed=seed, dev_fraction=0.2, test_fraction=0.2) for seed in args.seeds}
    started = time.perf_counter()
    per_seed = {seed: knn_answers(seed, args.neighbours, cases, options, args.overlaps) for seed in args.seeds}
    seconds_per_case = (time.perf_counter() - started) / (len(args.seeds) * 200)
    table: dict[str, Any] = {}
    for k in (key(n, w) for n in args.neighbours for w in args.overlaps):
        scores = {split: [aggregate([score(a, c.charges, options) for a, c in
                                     zip(per_seed[seed][k][split], splits[seed][1 if split == "dev" else 2])])
                          for seed in args.seeds] for split in ("dev", "test")}
        table[k] = {split: {metric: statistics.mean(s[metric] for s in scores[split])
                            for metric in ("f1", "top1_accuracy", "abstention_rate")} for split in scores}
        table[k]["test_f1_per_seed"] = [s["f1"] for s in scores["test"]]
        print(f"neighbours {k}: dev F1 {table[k]['dev']['f1']:.4f}  test F1 {table[k]['test']['f1']:.4f}", flush=True)
    return {"mode": "knn", "seeds": args.seeds, "seconds_per_case": seconds_per_case, "by_neighbours": table}


def sia(home: Path, *arguments: str, timeout: float = 3600) -> str:
    environment = {**os.environ, "SIA_HOME": str(home), "ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": "",
                   "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sia", *arguments], env=environment, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sia {' '.join(arguments)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def payloads(home: Path, run: str, kind: str) -> list[dict[str, Any]]:
    lines = sia(home, "log", run, "--type", kind, "--json").splitlines()
    return [json.loads(line)["payload"] for line in lines if line.strip()]


def task_with_split_seed(seed: int, root: Path) -> Path:
    """A copy of the bundled lawbench task whose split is `split_cases(seed=seed)`, the split
    the baselines and `knn` use for that seed."""
    folder = root / f"lawbench-split{seed}"
    shutil.copytree(BUNDLED_ROOT / "lawbench", folder, ignore=shutil.ignore_patterns("__pycache__"))
    spec = folder / "task.toml"
    text = spec.read_text(encoding="utf-8")
    build = text.index("[build]")
    spec.write_text(text[:build] + text[build:].replace("seed = 0", f"seed = {seed}", 1), encoding="utf-8")
    return folder


def loop_run(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    home = root / f"seed{seed}"
    task = task_with_split_seed(seed, root)
    started = time.monotonic()
    out = sia(home, "run", "--task", str(task), "--data", str(args.data), "--mode", "H",
              "--max-gen", str(args.max_gen), "--seed", str(seed), "--quiet", *args.extra)
    seconds = time.monotonic() - started
    run = out.split()[-1]
    evaluations = payloads(home, run, "EvaluationRecorded")
    decisions = payloads(home, run, "FeedbackDecided")
    tests = payloads(home, run, "TestScored")
    return {"seed": seed, "run": run, "seconds": round(seconds, 1),
            "dev_f1": [e["metrics"].get("f1", e["score"]) for e in evaluations],
            "decisions": [{"action": d.get("action"), "rationale": d.get("rationale")} for d in decisions],
            "test": tests[-1] if tests else None}


def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sia-lawbench-loop-"))
    runs = []
    for seed in args.seeds:
        runs.append(loop_run(seed, args, root))
        print(json.dumps(runs[-1], ensure_ascii=False), flush=True)
    finals = [r["test"]["score"] for r in runs if r["test"] and r["test"]["score"] is not None]
    return {"mode": "loop", "split_seeds": args.seeds, "max_gen": args.max_gen, "runs": runs,
            "test_f1_mean": statistics.mean(finals) if finals else None,
            "seconds_mean": statistics.mean(r["seconds"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("knn", "loop"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="split seeds (the task's [build] seed; the run seed is the same)")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.0],
                        help="OVERLAP weights of the vote reread by the sample's text (knn mode)")
    parser.add_argument("--max-gen", type=int, default=3)
    parser.add_argument("--extra", nargs="*", default=[], help="more `sia run` arguments")
    args = parser.parse_args()
    result = run_knn(args) if args.mode == "knn" else run_loop(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"lawbench_harness_{args.mode}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
