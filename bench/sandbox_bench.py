"""Sandbox benchmark (issue G): what the bubblewrap boundary costs per episode.

    python bench/sandbox_bench.py [--episodes 100] [--concurrent 200]

Runs a trivial harness that makes one model call to a `ScriptedBackend` through a real
gateway, in the bubblewrap sandbox and in the process sandbox, alternating so both see
the same machine load:

* per-episode wall time, one episode at a time (`--episodes` each): median and p95, and
  the median extra cost of bwrap;
* throughput at concurrency 8 (`--concurrent` episodes from 8 threads): episodes/s, and
  bwrap's as a share of the process sandbox's.

Targets: ≤ 30 ms extra per episode, ≥ 80 % of the process sandbox's throughput.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from sia.harness.backends import ScriptedBackend
from sia.harness.gateway import ModelGateway
from sia.harness.sandbox import ISOLATIONS, Isolation, run_episode

HARNESS = "def solve(sample, model):\n    return model.complete(sample['question'], max_tokens=2)\n"
SAMPLE = {"id": "s", "question": "i saw a plum"}


def episode(gateway: ModelGateway, isolation: Isolation, name: str) -> float:
    started = time.perf_counter()
    outcome = run_episode(HARNESS, SAMPLE, model_socket=gateway.open_episode(name),
                          isolation=isolation)
    elapsed = time.perf_counter() - started
    calls = gateway.close_episode(name)
    if outcome.status != "ok" or len(calls) != 1:
        raise SystemExit(f"{isolation}: the bench episode failed: {outcome}")
    return elapsed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=200)
    args = parser.parse_args()
    with ModelGateway(ScriptedBackend(replies={"i saw a plum": "fruit"})) as gateway:
        for isolation in ISOLATIONS:
            episode(gateway, isolation, f"warm-{isolation}")
        times: dict[str, list[float]] = {isolation: [] for isolation in ISOLATIONS}
        for index in range(args.episodes):
            for isolation in ISOLATIONS:
                times[isolation].append(episode(gateway, isolation, f"{isolation}-{index}"))
        rates: dict[str, float] = {}
        for isolation in ISOLATIONS:
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda i: episode(gateway, isolation, f"c-{isolation}-{i}"),
                              range(args.concurrent)))
            rates[isolation] = args.concurrent / (time.perf_counter() - started)
    print(f"{'sandbox':<8} {'median ms':>10} {'p95 ms':>8} {'episodes/s @8':>14}")
    for isolation in ISOLATIONS:
        print(f"{isolation:<8} {1000 * statistics.median(times[isolation]):>10.1f} "
              f"{1000 * percentile(times[isolation], 0.95):>8.1f} {rates[isolation]:>14.1f}")
    extra = statistics.median(times["bwrap"]) - statistics.median(times["process"])
    extra_p95 = percentile(times["bwrap"], 0.95) - percentile(times["process"], 0.95)
    print(f"bwrap extra per episode: median {1000 * extra:+.1f} ms, p95 {1000 * extra_p95:+.1f} ms "
          f"(target <= 30 ms); throughput {100 * rates['bwrap'] / rates['process']:.0f} % of the "
          f"process sandbox's (target >= 80 %)")


if __name__ == "__main__":
    main()
