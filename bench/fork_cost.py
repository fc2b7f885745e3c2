"""What a fork server saves per episode (issue I): the CPU of an episode's child forked from an
interpreter that has already imported the runner's modules, against a fresh `python -I -S` that
imports them, as every episode's sandbox started before `sia.harness.forkserver` (and as the
process sandbox still does). The measure that led to building it; the built one adds its
namespaces and mounts (`bench/episode_throughput.py` measures the whole).

    python bench/fork_cost.py [--children 200]

The forked child loads a one-line harness from its file, calls `solve` and writes the answer to
a pipe, as the runner does; it sets up no sandbox, limits or model call (those cost the same
either way). Writes bench/results/fork_cost.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RUNNER_IMPORTS = "import importlib.util, json, os, resource, signal, socket, sys, traceback"
HARNESS = "def solve(sample, model):\n    return sample['question'][:3]\n"


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def forked_child(harness: Path) -> None:
    """One episode's work in a child of this (warm) interpreter."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        spec = importlib.util.spec_from_file_location("harness", harness)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        os.write(write_end, json.dumps({"status": "ok", "answer": module.solve({"question": "Is 1?"}, None)}).encode())
        os._exit(0)
    os.close(write_end)
    os.read(read_end, 4096)
    os.close(read_end)
    os.waitpid(pid, 0)


def fresh_child() -> None:
    subprocess.run([sys.executable, "-I", "-S", "-c", RUNNER_IMPORTS], check=True)


def per_child(start: Callable[[], None], count: int) -> tuple[float, float]:
    """CPU and wall milliseconds per child of `count` children started by `start()`."""
    cpu, wall = children_cpu_s(), time.perf_counter()
    for _ in range(count):
        start()
    return (1000 * (children_cpu_s() - cpu) / count, 1000 * (time.perf_counter() - wall) / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=200)
    args = parser.parse_args()
    exec(RUNNER_IMPORTS)  # noqa: S102 - warm this interpreter as a fork server would be
    with tempfile.TemporaryDirectory() as folder:
        harness = Path(folder) / "harness.py"
        harness.write_text(HARNESS, encoding="utf-8")
        forked = per_child(lambda: forked_child(harness), args.children)
        fresh = per_child(fresh_child, max(10, args.children // 5))
    result = {"children": args.children, "forked_cpu_ms": round(forked[0], 2), "forked_wall_ms": round(forked[1], 2),
              "fresh_cpu_ms": round(fresh[0], 2), "fresh_wall_ms": round(fresh[1], 2),
              "load": round(os.getloadavg()[0], 2)}
    print(f"forked from a warm interpreter: {result['forked_cpu_ms']} ms CPU, {result['forked_wall_ms']} ms wall "
          f"per child; a fresh python -I -S with the runner's imports: {result['fresh_cpu_ms']} ms CPU, "
          f"{result['fresh_wall_ms']} ms wall")
    out = Path(__file__).parent / "results" / "fork_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
