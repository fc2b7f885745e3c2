"""Search against a line: `--candidates 4` vs `--candidates 1` at the same episode budget.

For each task and seed, two `sia run`s with the built-in policy and the same
`--budget episodes=N` (a search's candidate branches count against it), one home per
run so nothing is shared through the cache (the embedded model, which is built from the
task alone, is built by the first run and hard-linked into the other homes). Reported per
run: the final answer's held-out test score (measured once, at the end), the best dev
score, the episodes spent, and whether the incumbent ever decreased (it must not, for a
search: the keep-best gate).

    python bench/search_yield.py [--task wordcat] [--seeds 5] [--episodes 640] [--mode H]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sia(home: Path, *args: str) -> str:
    env = {**os.environ, "SIA_HOME": str(home), "ANTHROPIC_API_KEY": ""}
    return subprocess.run([sys.executable, "-m", "sia", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def one_run(task: str, seed: int, candidates: int, args: argparse.Namespace, root: Path) -> dict:
    home = root / f"{task}-{seed}-{candidates}"
    built = root / "models"
    if built.is_dir():  # the embedded model is built from the task alone: build it once, not per run
        shutil.copytree(built, home / "models", copy_function=os.link)
    extra = ["--data", args.data] if args.data else []
    started = time.perf_counter()
    run_id = sia(home, "run", "--task", task, *extra, "--mode", args.mode, "--seed", str(seed),
                 "--max-gen", str(args.max_gen), "--candidates", str(candidates), "--quiet",
                 "--concurrency", str(args.concurrency), "--budget", f"episodes={args.episodes}",
                 "--set", f"patience={args.patience}").strip().splitlines()[-1]
    if not built.is_dir():
        shutil.copytree(home / "models", built, copy_function=os.link)
    shown = json.loads(sia(home, "show", run_id, "--json"))
    episodes = shown["ledger"]["by_kind"].get("episode", {})
    spent = episodes.get("effects", 0) - episodes.get("cache_hits", 0)
    spent += sum(o["episodes"] for r in shown["search"] for o in r["outcomes"])
    dev = [s for s in shown["dev_scores"] if s is not None]
    return {"task": task, "seed": seed, "candidates": candidates, "test_score": shown["test_score"],
            "best_dev": shown["best_score"], "episodes": spent, "generations": len(dev),
            "incumbent_never_decreased": all(b > a for a, b in itertools.pairwise(dev)) if candidates > 1 else None,
            "stop_reason": shown["stop_reason"], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="wordcat")
    parser.add_argument("--data", default=None, help="data file for tasks built from one (LawBench)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=640)
    parser.add_argument("--mode", default="H")
    parser.add_argument("--max-gen", type=int, default=50)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search_yield.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sia-search-") as tmp:
        for seed in range(args.seeds):
            for candidates in (1, 4):
                row = one_run(args.task, seed, candidates, args, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for candidates in (1, 4):
        scores = [r["test_score"] or 0.0 for r in rows if r["candidates"] == candidates]
        summary[f"candidates_{candidates}"] = {"mean_test": round(statistics.mean(scores), 4),
                                               "min_test": min(scores), "max_test": max(scores)}
    line = {r["seed"]: r["test_score"] or 0.0 for r in rows if r["candidates"] == 1}
    search = {r["seed"]: r["test_score"] or 0.0 for r in rows if r["candidates"] == 4}
    summary["worst_seed_difference"] = round(min(search[s] - line[s] for s in line), 4)
    result = {"task": args.task, "mode": args.mode, "episode_budget": args.episodes, "rows": rows,
              "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[f"{args.task}-{args.mode}"] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
