"""Append throughput of sia's store alone, in wall-clock and CPU time (issue G).

    python bench/append_cpu.py            # 20k events batched (1000 per commit), 2k single

Uses store_bench.py's `Sia` adapter and workload, without the peers. CPU time
(`time.process_time`) is reported beside wall time because this machine is shared: under
load the wall rate halves from one run to the next while the CPU rate moves by a few
percent, so before/after comparisons of a change (the keyed MAC per row) use the CPU rate.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from store_bench import Sia  # noqa: E402
from workload import events  # noqa: E402

from sia.core.events.mapper import MAPPER  # noqa: E402

EVENTS, SINGLE, REPEATS = 20_000, 2_000, 5


def wall_and_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    encoded = [MAPPER.encode(e) for e in events(EVENTS)]
    rates: dict[str, list[tuple[float, float]]] = {"single": [], "batched": []}
    for _ in range(REPEATS):
        store = Sia(Path(tempfile.mkdtemp(prefix="sia-append-bench-")))
        wall, cpu = wall_and_cpu(lambda: store.append_single(encoded[:SINGLE]))
        rates["single"].append((SINGLE / wall, SINGLE / cpu))
        wall, cpu = wall_and_cpu(lambda: store.append_batched("run", encoded))
        rates["batched"].append((EVENTS / wall, EVENTS / cpu))
        store.store.close()
    for name, pairs in rates.items():
        print(f"{name:8} events/s, median of {REPEATS}: "
              f"wall {statistics.median(w for w, _ in pairs):>9,.0f}   "
              f"cpu {statistics.median(c for _, c in pairs):>9,.0f}")


if __name__ == "__main__":
    main()
