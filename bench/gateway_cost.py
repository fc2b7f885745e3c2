"""The model gateway's CPU per call (issue I): what sia's process spends serving one request.

    python bench/gateway_cost.py [--calls 3000] [--repeats 3]

A child process makes `--calls` completions through one episode's gateway socket, the way
the runner does (`post_unix`: one connection per call, `Connection: close`), against the
scripted backend; the bench reports this process's CPU (the gateway's threads and the
backend) per call, so the client's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from sia.harness.backends import ScriptedBackend
from sia.harness.gateway import GatewayLimits, ModelGateway

CLIENT = """
import json, sys
from sia.harness.runner import post_unix
for i in range(int(sys.argv[2])):
    body = json.dumps({"prompt": f"p{i}", "max_tokens": 4}).encode()
    status, reply = post_unix(sys.argv[1], "/v1/completions", body, 10)
    assert status == 200, reply
"""


def measure(calls: int) -> tuple[float, float]:
    """CPU and wall microseconds per call."""
    limits = GatewayLimits(max_calls=calls, max_completion_tokens=calls * 64)
    with ModelGateway(ScriptedBackend(), limits=limits) as gateway:
        path = gateway.open_episode("bench")
        wall, cpu = time.perf_counter(), time.process_time()
        subprocess.run([sys.executable, "-c", CLIENT, str(path), str(calls)], check=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert len(gateway.close_episode("bench")) == calls
    return 1e6 * cpu / calls, 1e6 * wall / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [measure(args.calls) for _ in range(args.repeats)]
    cpu = [round(run[0]) for run in runs]
    print(f"gateway CPU per call: median {statistics.median(cpu):.0f} us (runs {cpu}); "
          f"wall per call {statistics.median(run[1] for run in runs):.0f} us")


if __name__ == "__main__":
    main()
