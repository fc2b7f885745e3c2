"""Resume benchmark (issue B): a 100k-event run reaches its first new effect in < 1 s.

    python bench/resume_bench.py [--events 100000]

Writes a realistic 100k-event run (bench/workload.py) that stops mid-generation, saving
snapshots every `SNAPSHOT_EVERY` events exactly as the runtime does while it drives a
run, then, in a fresh process, times `Runtime.drive` from its call to the first call of
the next effect's handler: lease, snapshot load, tail fold, decide, request commit.
Also reports the same with snapshots ignored (a full fold).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PROBE = r"""
import sys, time
from pathlib import Path
import sia.runtime.loop as runtime_module
from sia.effects.base import EffectResult, HandlerRegistry
from sia.store.sqlite import SqliteEventStore

class Clocked:
    kind = "episode"
    first = None
    def run(self, request, ctx):
        if Clocked.first is None:
            Clocked.first = time.perf_counter()
        raise KeyboardInterrupt

if sys.argv[2] == "no-snapshots":
    runtime_module.REDUCER_VERSION = "none"
store = SqliteEventStore(Path(sys.argv[1]))
runtime = runtime_module.Runtime(store, HandlerRegistry({"episode": Clocked()}), concurrency=1)
start = time.perf_counter()
try:
    runtime.drive("bench", max_batches=1)
except KeyboardInterrupt:
    pass
print(Clocked.first - start)
"""


def main() -> None:
    from workload import events, record_run

    from sia.core.events.mapper import MAPPER
    from sia.store.sqlite import SqliteEventStore

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="sia-resume-bench-")) / "sia.sqlite"
    store = SqliteEventStore(path)
    encoded = [MAPPER.encode(e) for e in events(args.events)]
    while encoded[-1].type != "EpisodeRecorded":
        encoded.pop()
    state = record_run(store, encoded)
    store.close()
    print(f"run of {state.seq} events, generation {state.generation}, "
          f"{len(state.current.episodes)} episodes recorded in it")
    results = {}
    for mode in ("snapshots", "no-snapshots"):
        times = []
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", PROBE, str(path), mode],
                                  capture_output=True, text=True, check=True)
            times.append(float(done.stdout.strip().splitlines()[-1]))
        results[mode] = sorted(times)[1]
        print(f"resume → first new effect ({mode}): median {results[mode]:.3f} s "
              f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "resume_bench.json").write_text(json.dumps({"events": state.seq, **results}, indent=2))


if __name__ == "__main__":
    main()
