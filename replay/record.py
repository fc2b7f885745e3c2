"""Re-record the runs in this folder (deterministic handlers; run from the repo root).

    python replay/record.py

Three small runs made by sia itself: a plain run, a fork with a forced decision, and a
run killed with SIGKILL mid-batch and resumed. CI replays each with `replay --check`, so
a change to the pure core that would alter a recorded decision fails the build. Re-record
only when such a change is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sia(home: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run([sys.executable, "-m", "sia", *args], capture_output=True, text=True,
                            env={**os.environ, "SIA_HOME": str(home), **(env or {})})
    if check and result.returncode != 0:
        raise SystemExit(f"sia {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="sia-replay-"))
    plain = sia(home, "run", "--task", "toy", "--max-gen", "3", "--quiet", "--run-id", "toy-plain")
    log = [json.loads(line) for line in subprocess.run(
        [sys.executable, "-m", "sia", "log", plain, "--json"], capture_output=True, text=True,
        env={**os.environ, "SIA_HOME": str(home)}, check=True).stdout.splitlines()]
    at = next(e["seq"] for e in log if e["type"] == "EffectRequested"
              and e["payload"]["kind"] == "feedback") - 1
    fork = sia(home, "fork", plain, "--at", str(at), "--set", "feedback.force=update_weights:entropic",
               "--set", "max_gen=4")
    sia(home, "resume", fork, "--quiet")
    sia(home, "run", "--task", "toy", "--max-gen", "3", "--mode", "H", "--quiet", "--run-id",
        "toy-crashed", "--seed", "7", env={"SIA_CRASH_AT": "mid_batch:5"}, check=False)
    sia(home, "resume", "toy-crashed", "--quiet")
    for run_id, name in ((plain, "toy-plain"), (fork, "toy-fork-forced-entropic"),
                         ("toy-crashed", "toy-crashed-resumed")):
        sia(home, "export", run_id, "-o", str(HERE / f"{name}.jsonl"))
        print(f"recorded {name}.jsonl")


if __name__ == "__main__":
    main()
