"""Wall time of the inspection commands (issue A: each answers in < 1 s, no heavy imports).

    python bench/cli_latency.py [--repeats 5]

Records a toy run in a temporary home, then times each command as a fresh process
(median of repeats) and checks that none imported torch, transformers, peft or trl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = ("import sys, runpy; sys.argv = ['sia'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('sia', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY', [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules],"
         " file=sys.stderr)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sia-cli-bench-")
    env = {**os.environ, "SIA_HOME": home}
    run_id = subprocess.run([sys.executable, "-m", "sia", "run", "--task", "toy", "--quiet"],
                            env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    print(f"{'command':<28} {'median s':>9} {'max s':>7}  heavy imports")
    for command in (["--help"], ["runs"], ["log", run_id], ["show", run_id], ["show", run_id, "--json"],
                    ["audit", run_id], ["verify", run_id]):
        times, heavy = [], ""
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE, *command], env=env,
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            heavy = done.stderr.strip().splitlines()[-1].removeprefix("HEAVY ")
        label = " ".join(c if len(c) < 20 else "RUN" for c in command)
        print(f"sia {label:<24} {statistics.median(times):>9.3f} {max(times):>7.3f}  {heavy}")


if __name__ == "__main__":
    main()
