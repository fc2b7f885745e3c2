"""Store benchmark (issue A): sia vs the eventsourcing SQLite recorder vs LangGraph's SqliteSaver.

    python bench/store_bench.py            # 100k events; fork parents of 1k, 100k, 1M (sia)
    python bench/store_bench.py --quick    # 20k events, fork parents of 1k and 20k

Same workload for everyone: the events of a realistic run (bench/workload.py, 0.5-2 KB
payloads), each stored as its canonical sia envelope. Measured side by side:

* append: one event per transaction (on the first 5k events) and batched (1000 per
  transaction) over the whole workload, events/s;
* read + decode + fold of the whole run into sia's LoopState (each peer reads its rows
  back and hands them to the same decoder and reducer, so only storage differs);
* for sia also: the pure fold of already-decoded events, and loading the run through a
  snapshot (what `resume`/`show` do once the runtime has written one);
* fork cost versus parent length. sia records a fork by reference (one row + one event).
  eventsourcing has no lineage, so its fork is copying the parent's events into a new
  aggregate. LangGraph forks a thread by putting a checkpoint whose parent is the fork
  point, which is O(1) as well.

LangGraph's SqliteSaver commits every `put`, so its "batched" append is the same loop.
Results are printed as a table of absolute numbers and ratios, and written to
bench/results/store_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from workload import events  # noqa: E402

from sia.core.events.envelope import EncodedEvent, StoredEvent, seal_batch  # noqa: E402
from sia.core.events.mapper import MAPPER  # noqa: E402
from sia.core.events.types import RunConfig, RunForked  # noqa: E402
from sia.core.reducers.loop import fold  # noqa: E402
from sia.runtime.loop import load_state, save_snapshot  # noqa: E402
from sia.store.sqlite import SqliteEventStore  # noqa: E402

BATCH = 1000


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- sia


class Sia:
    name = "sia"

    def __init__(self, root: Path) -> None:
        self.store = SqliteEventStore(root / "sia.sqlite")

    def append_single(self, encoded: list[EncodedEvent]) -> None:
        self.store.create_run("single", encoded[:1])
        for seq, event in enumerate(encoded[1:], start=1):
            self.store.append("single", [event], expected_last_seq=seq)

    def append_batched(self, run_id: str, encoded: list[EncodedEvent]) -> None:
        self.store.create_run(run_id, encoded[:1])
        for start in range(1, len(encoded), BATCH):
            self.store.append(run_id, encoded[start:start + BATCH], expected_last_seq=start)

    def read_events(self, run_id: str) -> Iterator[StoredEvent]:
        return self.store.read(run_id)

    def fork(self, run_id: str, child: str) -> None:
        at = self.store.last_seq(run_id)
        forked = RunForked(parent_run_id=run_id, fork_seq=at, config=RunConfig(task="bench"))
        self.store.create_run(child, [MAPPER.encode(forked)], parent_run_id=run_id, fork_seq=at)


# ---------------------------------------------------------------- eventsourcing


class EventSourcing:
    name = "eventsourcing"

    def __init__(self, root: Path) -> None:
        from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteDatastore

        self.datastore = SQLiteDatastore(str(root / "es.sqlite"))
        self.recorder = SQLiteAggregateRecorder(self.datastore)
        self.recorder.create_table()
        self.ids: dict[str, uuid.UUID] = {}

    def _stored(self, aggregate: uuid.UUID, version: int, sealed: StoredEvent):  # type: ignore[no-untyped-def]
        from eventsourcing.persistence import StoredEvent as EsStoredEvent

        return EsStoredEvent(originator_id=aggregate, originator_version=version,
                             topic=f"sia:{sealed.type}", state=json.dumps(asdict(sealed)).encode())

    def append_single(self, encoded: list[EncodedEvent]) -> None:
        aggregate = self.ids.setdefault("single", uuid.uuid4())
        for version, sealed in enumerate(seal_batch(encoded, "single", 0, "0" * 64, "t"), start=1):
            self.recorder.insert_events([self._stored(aggregate, version, sealed)])

    def append_batched(self, run_id: str, encoded: list[EncodedEvent]) -> None:
        aggregate = self.ids.setdefault(run_id, uuid.uuid4())
        sealed = seal_batch(encoded, run_id, 0, "0" * 64, "t")
        for start in range(0, len(sealed), BATCH):
            self.recorder.insert_events([self._stored(aggregate, start + i + 1, e)
                                         for i, e in enumerate(sealed[start:start + BATCH])])

    def read_events(self, run_id: str) -> Iterator[StoredEvent]:
        for row in self.recorder.select_events(self.ids[run_id]):
            yield StoredEvent(**json.loads(row.state))

    def fork(self, run_id: str, child: str) -> None:
        aggregate = self.ids.setdefault(child, uuid.uuid4())
        rows = self.recorder.select_events(self.ids[run_id])
        copied = [self._stored(aggregate, row.originator_version, StoredEvent(**json.loads(row.state)))
                  for row in rows]
        for start in range(0, len(copied), BATCH):
            self.recorder.insert_events(copied[start:start + BATCH])


# ---------------------------------------------------------------- LangGraph


class LangGraph:
    name = "langgraph SqliteSaver"

    def __init__(self, root: Path) -> None:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        self.saver = SqliteSaver(sqlite3.connect(root / "lg.sqlite", check_same_thread=False))
        self.saver.setup()
        self.heads: dict[str, dict] = {}

    def _put(self, thread: str, sealed: StoredEvent, parent: dict | None) -> dict:
        from langgraph.checkpoint.base import empty_checkpoint

        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"event": asdict(sealed)}
        config = parent or {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        return self.saver.put(config, checkpoint, {"source": "loop", "step": sealed.seq}, {})

    def append_single(self, encoded: list[EncodedEvent]) -> None:
        self.append_batched("single", encoded)

    def append_batched(self, run_id: str, encoded: list[EncodedEvent]) -> None:
        head = None
        for sealed in seal_batch(encoded, run_id, 0, "0" * 64, "t"):
            head = self._put(run_id, sealed, head)
        self.heads[run_id] = head or {}

    def read_events(self, run_id: str) -> Iterator[StoredEvent]:
        config = {"configurable": {"thread_id": run_id, "checkpoint_ns": ""}}
        rows = list(self.saver.list(config))
        for row in reversed(rows):
            yield StoredEvent(**row.checkpoint["channel_values"]["event"])

    def fork(self, run_id: str, child: str) -> None:
        head = self.heads[run_id]
        forked = seal_batch([MAPPER.encode(RunForked(parent_run_id=run_id, fork_seq=0,
                                                     config=RunConfig(task="bench")))],
                            child, 0, "0" * 64, "t")[0]
        self._put(run_id, forked, head)


# ---------------------------------------------------------------- the benchmark


def fold_time(store: object, run_id: str) -> float:
    return timed(lambda: fold(MAPPER.decode(e) for e in store.read_events(run_id)))  # type: ignore[attr-defined]


def fork_ms(store: object, run_id: str, repeats: int) -> float:
    times = [timed(lambda i=i: store.fork(run_id, f"{run_id}-fork-{i}")) for i in range(repeats)]  # type: ignore[attr-defined]
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--million", action="store_true", default=True,
                        help="also fork a 1M-event parent (sia only; peers would take minutes)")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.events
    parents = [1_000, n] + ([] if args.quick else [1_000_000])
    print(f"workload: {n} events, payload median "
          f"{statistics.median(len(e.payload) for e in (MAPPER.encode(x) for x in events(2000)))} B")
    encoded = [MAPPER.encode(e) for e in events(max(n, 5_000))]
    results: dict[str, dict[str, float]] = {}
    root = Path(tempfile.mkdtemp(prefix="sia-store-bench-"))
    for cls in (Sia, EventSourcing, LangGraph):
        (root / cls.__name__).mkdir(exist_ok=True)
        store = cls(root / cls.__name__)
        row: dict[str, float] = {}
        single = 5_000
        row["append_single_ev_s"] = single / timed(lambda: store.append_single(encoded[:single]))
        row["append_batched_ev_s"] = n / timed(lambda: store.append_batched("run", encoded[:n]))
        row["read_decode_fold_s"] = min(fold_time(store, "run") for _ in range(2))
        for size in parents:
            if size > n and cls is not Sia:
                continue
            parent = f"p{size}"
            if size == n:
                parent = "run"
            elif size > n:
                big = [MAPPER.encode(e) for e in events(size)]
                store.append_batched(parent, big)
                del big
            else:
                store.append_batched(parent, encoded[:size])
            row[f"fork_ms_{size}"] = fork_ms(store, parent, 5)
        if cls is Sia:
            decoded = [MAPPER.decode(e) for e in store.read_events("run")]
            row["fold_only_s"] = min(timed(lambda: fold(decoded)) for _ in range(3))
            del decoded
            save_snapshot(store.store, "run", load_state(store.store, "run"))
            row["load_with_snapshot_s"] = min(timed(lambda: load_state(store.store, "run"))
                                              for _ in range(3))
        results[cls.name] = row
        print(f"  {cls.name}: " + ", ".join(f"{k}={v:,.3f}" for k, v in row.items()), flush=True)

    sia = results["sia"]
    print(f"\n{'metric':<26}" + "".join(f"{name:>24}" for name in results) + "   sia ÷ peers")
    for metric in sia:
        cells = "".join(f"{results[name].get(metric, float('nan')):>24,.3f}" for name in results)
        better_high = metric.startswith("append")
        ratios = []
        for name, row in results.items():
            if name == "sia" or metric not in row:
                continue
            ratio = sia[metric] / row[metric] if better_high else row[metric] / sia[metric]
            ratios.append(f"{ratio:,.1f}x vs {name.split()[0]}")
        print(f"{metric:<26}{cells}   {'; '.join(ratios)}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "store_bench.json").write_text(json.dumps({"events": n, "results": results}, indent=2))


if __name__ == "__main__":
    main()
