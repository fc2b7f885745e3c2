"""Each training algorithm: dev score before and after one weight update, on two tasks.

One `sia run` per task reaches the point where the built-in Feedback Agent decides
after generation 1 (the harness already edited); then one fork per algorithm forces
`update_weights:ALGORITHM` there and runs one more generation. The forks share the
parent's prefix, so all six start from the same recorded trajectories.

Tasks: wordcat (binary reward, the default task) and wordcat_graded (wordcat with a
continuous reward, the character similarity of the answer to the category name; built for
this bench by laying `bench/tasks/wordcat_graded`'s evaluator and task.toml over a copy of
wordcat). An update with no learning signal is reported as
such (its row says why) and its dev change is not the algorithm's: the Feedback Agent
was asked again and did something else.

    python bench/algorithms.py [--home DIR] [--task wordcat --task PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGORITHMS = ("ppo_gae", "grpo", "entropic", "reinforce_kl", "dpo", "best_of_n")


def sia(home: Path, *args: str) -> str:
    env = {**os.environ, "SIA_HOME": str(home), "ANTHROPIC_API_KEY": ""}
    return subprocess.run([sys.executable, "-m", "sia", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def log(home: Path, run: str, kind: str) -> list[dict]:
    return [json.loads(line) for line in sia(home, "log", run, "--type", kind, "--json").splitlines()]


def bench_task(home: Path, task: str) -> dict:
    parent = sia(home, "run", "--task", task, "--max-gen", "2", "--quiet").split()[-1]
    completed = log(home, parent, "GenerationCompleted")
    at, before = completed[-1]["seq"], completed[-1]["payload"]["dev_score"]
    rows = []
    for algorithm in ALGORITHMS:
        started = time.perf_counter()
        fork = sia(home, "fork", parent, "--at", str(at), "--set",
                   f"feedback.force=update_weights:{algorithm}", "--set", "max_gen=3").split()[-1]
        sia(home, "resume", fork, "--quiet")
        after = log(home, fork, "GenerationCompleted")[-1]["payload"]["dev_score"]
        adapters = log(home, fork, "AdapterCheckpointed")
        no_signal = [e["payload"] for e in log(home, fork, "TrainingNoSignal")]
        metrics = adapters[-1]["payload"]["metrics"] if adapters else (no_signal[0].get("metrics") or {})
        rows.append({"algorithm": algorithm, "before": before, "after": after,
                     "updated": bool(adapters), "no_signal": no_signal[0]["reason"] if no_signal else None,
                     "rollout_reward": metrics.get("rollout_reward"),
                     "policy_unchanged": metrics.get("policy_unchanged"),
                     "seconds": round(time.perf_counter() - started, 1), "fork": fork})
    return {"task": task, "parent": parent, "rows": rows}


def graded_wordcat(root: Path) -> Path:
    """wordcat with a continuous reward: the bundled task folder, with the evaluator and
    task.toml of `bench/tasks/wordcat_graded` laid over it (so no data is copied in git)."""
    import shutil

    from sia.tasks.loader import BUNDLED_ROOT

    folder = root / "wordcat_graded"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(BUNDLED_ROOT / "wordcat", folder)
    for overlay in (Path(__file__).parent / "tasks" / "wordcat_graded").iterdir():
        shutil.copy(overlay, folder / overlay.name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--task", action="append", default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="sia-bench-algorithms-"))
    tasks = args.task or ["wordcat", str(graded_wordcat(home / "tasks"))]
    results = []
    for task in tasks:
        result = bench_task(home, task)
        results.append(result)
        print(f"\n{Path(task).name}")
        print(f"{'algorithm':<14}{'dev before':>11}{'dev after':>11}{'Δ':>8}{'fork s':>8}  outcome")
        for row in result["rows"]:
            outcome = "updated" if row["updated"] else f"no signal: {row['no_signal']}"
            print(f"{row['algorithm']:<14}{row['before']:>11.3f}{row['after']:>11.3f}"
                  f"{row['after'] - row['before']:>+8.3f}{row['seconds']:>8.1f}  {outcome}", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "algorithms.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
