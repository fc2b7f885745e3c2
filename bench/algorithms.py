"""Each training algorithm on the default task: dev score before and after one weight update.

One `sia run` on wordcat reaches the point where the built-in Feedback Agent decides
after generation 1 (the harness already edited); then one fork per algorithm forces
`update_weights:ALGORITHM` there and runs one more generation. The forks share the
parent's prefix, so all six start from the same recorded trajectories.

    python bench/algorithms.py [--home DIR]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="sia-bench-algorithms-"))
    parent = sia(home, "run", "--task", "wordcat", "--max-gen", "2", "--quiet").split()[-1]
    completed = log(home, parent, "GenerationCompleted")
    at, before = completed[-1]["seq"], completed[-1]["payload"]["dev_score"]
    rows = []
    for algorithm in ALGORITHMS:
        started = time.perf_counter()
        fork = sia(home, "fork", parent, "--at", str(at), "--set",
                   f"feedback.force=update_weights:{algorithm}", "--set", "max_gen=3").split()[-1]
        sia(home, "resume", fork, "--quiet")
        after = log(home, fork, "GenerationCompleted")[-1]["payload"]["dev_score"]
        metrics = log(home, fork, "AdapterCheckpointed")[-1]["payload"]["metrics"]
        rows.append({"algorithm": algorithm, "before": before, "after": after,
                     "rollout_reward": metrics.get("rollout_reward"),
                     "seconds": round(time.perf_counter() - started, 1), "fork": fork})
    print(f"{'algorithm':<14}{'dev before':>11}{'dev after':>11}{'Δ':>8}{'fork s':>8}")
    for row in rows:
        print(f"{row['algorithm']:<14}{row['before']:>11.3f}{row['after']:>11.3f}"
              f"{row['after'] - row['before']:>+8.3f}{row['seconds']:>8.1f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "algorithms.json").write_text(json.dumps({"parent": parent, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
