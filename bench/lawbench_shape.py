"""The paper's shape on LawBench 3-3, offline: base, mode H and mode WH at equal episode budgets.

    python bench/lawbench_shape.py [--data 3-3.json] [--seeds 0 1 2 3 4] [--max-gen 4]
                                   [--episodes 1200] [--arms base H WH]

Per split seed (the task's `[build] seed`, the splits the baselines use: 300 train, 100 dev,
100 test), three `sia run`s with the built-in policy and the embedded tiny model, each in a
fresh home: `base` (the Meta Agent's first harness, scored and kept: `--max-gen 1`), `H`
(harness edits only) and `WH` (harness edits and weight updates), the last two with the same
`--max-gen` and `--budget episodes=N`. Reported per arm, from the run's held-out test pass
(measured once, at the end): LawBench's official F1, top-1 accuracy and abstention, with the
wall time of the run; beside them the baselines a user would pick instead (charge-name
keyword match; character n-gram TF-IDF + linear classifier trained on the same train split,
`lawbench_baselines.py`) and the distance to GPT-4's published zero-shot F1 (0.4199).

The shape holds when the means rise base < H < WH and each step is larger than the seeds'
spread (max − min of the lower arm). Writes bench/results/lawbench_shape.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lawbench_baselines import (  # noqa: E402
    DATA,
    OPTIONS_FILE,
    evaluate,
    keyword,
    seeded_split,
    tfidf,
)
from lawbench_harness import payloads, sia, task_with_split_seed  # noqa: E402

from sia.tasks.lawbench import load_cases, load_charge_list  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "lawbench_shape.json"
GPT4_ZERO_SHOT_F1 = 0.4199
"""GPT-4's published zero-shot score on LawBench 3-3 (../shared/data/lawbench/official_scores.json)."""
METRICS = ("f1", "top1_accuracy", "abstention_rate")


def arm_run(arm: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One `sia run` of `arm` on split `seed`: its held-out test metrics, dev scores and levers."""
    home = root / f"{arm}-{seed}"
    task = task_with_split_seed(seed, root / f"{arm}-{seed}-task")
    mode, generations = ("H", 1) if arm == "base" else (arm, args.max_gen)
    started = time.monotonic()
    out = sia(home, "run", "--task", str(task), "--data", str(args.data), "--mode", mode,
              "--max-gen", str(generations), "--seed", str(seed), "--quiet",
              "--budget", f"episodes={args.episodes}")
    seconds = time.monotonic() - started
    run = out.split()[-1]
    tests = payloads(home, run, "TestScored")
    test = tests[-1] if tests else {}
    metrics = test.get("metrics") or {}
    return {"arm": arm, "seed": seed, "run": run, "seconds": round(seconds, 1),
            "test": {name: metrics.get(name) for name in METRICS},
            "test_generation": test.get("generation"),
            "dev_f1": [e["metrics"].get("f1", e["score"]) for e in payloads(home, run, "EvaluationRecorded")],
            "levers": [d.get("action") for d in payloads(home, run, "FeedbackDecided")]}


def baselines(seeds: list[int], data: Path) -> dict[str, list[dict[str, float]]]:
    cases, options = load_cases(data), list(load_charge_list(OPTIONS_FILE))
    scored: dict[str, list[dict[str, float]]] = {"keyword": [], "tfidf": []}
    for seed in seeds:
        train, test = seeded_split(cases, seed)
        for name, predict in (("keyword", keyword), ("tfidf", tfidf)):
            scored[name].append(evaluate(predict(train, test, options), test, options))
    return scored


def summary(rows: list[dict[str, float | None]]) -> dict[str, float]:
    f1 = [row["f1"] or 0.0 for row in rows]
    return {"f1_mean": round(statistics.mean(f1), 4), "f1_min": round(min(f1), 4), "f1_max": round(max(f1), 4),
            **{f"{name}_mean": round(statistics.mean(row[name] or 0.0 for row in rows), 4)
               for name in ("top1_accuracy", "abstention_rate")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=["base", "H", "WH"], choices=("base", "H", "WH"))
    parser.add_argument("--max-gen", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=1200)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="sia-lawbench-shape-") as tmp:
        for seed in args.seeds:
            for arm in args.arms:
                runs.append(arm_run(arm, seed, args, Path(tmp)))
                print(json.dumps(runs[-1], ensure_ascii=False), flush=True)
    table = {arm: summary([r["test"] for r in runs if r["arm"] == arm]) for arm in args.arms}
    for arm in args.arms:
        table[arm]["seconds_mean"] = round(statistics.mean(r["seconds"] for r in runs if r["arm"] == arm), 1)
    table.update({name: summary(rows) for name, rows in baselines(args.seeds, args.data).items()})
    steps = list(zip(args.arms, args.arms[1:]))
    shape = all(table[high]["f1_mean"] - table[low]["f1_mean"] > table[low]["f1_max"] - table[low]["f1_min"]
                for low, high in steps) if args.arms == ["base", "H", "WH"] else None
    result = {"seeds": args.seeds, "max_gen": args.max_gen, "episode_budget": args.episodes, "runs": runs,
              "table": table, "shape_holds": shape,
              "distance_to_gpt4": {arm: round(GPT4_ZERO_SHOT_F1 - table[arm]["f1_mean"], 4) for arm in args.arms}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"{'arm':<8} {'F1 mean':>8} {'min':>6} {'max':>6} {'top-1':>6} {'abstain':>8}")
    for name, row in table.items():
        print(f"{name:<8} {row['f1_mean']:>8.4f} {row['f1_min']:>6.3f} {row['f1_max']:>6.3f} "
              f"{row['top1_accuracy_mean']:>6.3f} {row['abstention_rate_mean']:>8.3f}")
    print(f"shape base < H < WH, each step above the spread: {shape}")


if __name__ == "__main__":
    main()
