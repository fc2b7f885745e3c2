"""An in-memory EventStore: the reference behaviour, and fast for tests and replay.

Its chain key lives only in memory and dies with the store: nothing outside the process
can reach the store at all, so the MACs matter here only as the reference behaviour the
conformance suite holds both stores to (a rewrite through the internals is caught the
same way a rewrite of the SQLite file is).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from sia.core.events.canonical import GENESIS_HASH
from sia.core.events.envelope import EncodedEvent, StoredEvent, seal_batch
from sia.store.base import (
    CacheEntry,
    ConcurrencyError,
    EventStore,
    Head,
    LeaseHeld,
    RunExists,
    RunRecord,
    Segment,
    Snapshot,
    UnknownRun,
    holder_is_dead,
    segment_bounds,
)
from sia.store.blobs import MemoryBlobStore
from sia.store.clock import SYSTEM_CLOCK, Clock
from sia.store.keys import ChainKey
from sia.store.redact import Redactor, redactor_from_environment


class MemoryEventStore(EventStore):
    def __init__(self, clock: Clock = SYSTEM_CLOCK, redactor: Redactor | None = None) -> None:
        """`redactor` None: redact the secrets of the process's environment."""
        self.redactor = redactor_from_environment() if redactor is None else redactor
        self.chain_key = ChainKey.generate()
        self.blobs = MemoryBlobStore(self.redactor)
        self._clock = clock
        self._macs: dict[tuple[str, int], str] = {}
        self._heads: dict[str, Head] = {}
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        self._cache: dict[str, CacheEntry] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._snapshots: dict[str, list[Snapshot]] = {}
        self._lock = threading.RLock()

    def create_run(
        self,
        run_id: str,
        events: Sequence[EncodedEvent],
        parent_run_id: str | None = None,
        fork_seq: int | None = None,
    ) -> list[StoredEvent]:
        with self._lock:
            if run_id in self._runs:
                raise RunExists(run_id)
            seq, prev = self.chain_start(parent_run_id, fork_seq)
            self._runs[run_id] = RunRecord(run_id, parent_run_id, fork_seq, self._clock.now())
            self._events[run_id] = []
            self._heads[run_id] = self._head_of(run_id, seq, prev)
            return self._add(run_id, events, seq, prev)

    def append(
        self, run_id: str, events: Sequence[EncodedEvent], expected_last_seq: int
    ) -> list[StoredEvent]:
        with self._lock:
            last = self.last_event(run_id)
            actual = 0 if last is None else last.seq
            if actual != expected_last_seq:
                raise ConcurrencyError(run_id, expected_last_seq, actual)
            return self._add(run_id, events, actual, last.hash if last else GENESIS_HASH)

    def _add(self, run_id: str, events: Sequence[EncodedEvent], seq: int, prev: str) -> list[StoredEvent]:
        sealed = seal_batch(self._redacted(events), run_id, seq, prev, self._clock.now())
        self._events[run_id].extend(sealed)
        for event in sealed:
            self._macs[(run_id, event.seq)] = self.chain_key.event_mac(event.hash)
        if sealed:
            self._heads[run_id] = self._head_of(run_id, sealed[-1].seq, sealed[-1].hash)
        return sealed

    def get_run(self, run_id: str) -> RunRecord:
        try:
            return self._runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def list_runs(self) -> list[RunRecord]:
        return sorted(self._runs.values(), key=lambda r: (r.created_at, r.run_id))

    def _own(self, run_id: str) -> list[StoredEvent]:
        self.get_run(run_id)
        return self._events[run_id]

    def _read_segment(self, segment: Segment, after: int, upto: int | None) -> Iterator[StoredEvent]:
        own = self._own(segment.run_id)
        base = self._runs[segment.run_id].fork_seq or 0
        lo, hi = segment_bounds(segment, after, upto)
        yield from own[max(lo - base, 0) : len(own) if hi is None else max(hi - base, 0)]

    def _last_own(self, run_id: str) -> StoredEvent | None:
        own = self._own(run_id)
        return own[-1] if own else None

    def _event_at(self, run_id: str, seq: int) -> StoredEvent | None:
        own = self._own(run_id)
        index = seq - (self._runs[run_id].fork_seq or 0) - 1
        return own[index] if 0 <= index < len(own) else None

    def _read_segment_macs(self, segment: Segment) -> Iterator[tuple[StoredEvent, str | None]]:
        for event in self._read_segment(segment, 0, None):
            yield event, self._macs.get((event.run_id, event.seq))

    def _head(self, run_id: str) -> Head | None:
        return self._heads.get(run_id)

    def import_events(self, runs: Sequence[RunRecord], events: Sequence[StoredEvent]) -> None:
        with self._lock:
            for run in runs:
                if run.run_id in self._runs:
                    raise RunExists(run.run_id)
            self._refuse_secrets(events)
            for run in runs:
                self._runs[run.run_id] = run
                self._events[run.run_id] = []
            for event in sorted(events, key=lambda e: (e.run_id, e.seq)):
                self._events[event.run_id].append(event)
                self._macs[(event.run_id, event.seq)] = self.chain_key.event_mac(event.hash)
            for run in runs:
                last = self.last_event(run.run_id)
                self._heads[run.run_id] = self._head_of(
                    run.run_id, last.seq if last else 0, last.hash if last else GENESIS_HASH)

    def cache_get(self, key: str) -> CacheEntry | None:
        return self._cache.get(key)

    def cache_put(self, entry: CacheEntry) -> None:
        with self._lock:
            self._cache.setdefault(entry.key, self._redacted_entry(entry))

    def put_snapshot(self, snapshot: Snapshot) -> None:
        snapshot = Snapshot(snapshot.run_id, snapshot.seq, snapshot.version, snapshot.last_hash,
                            self.redactor.redact_document(snapshot.body))
        with self._lock:
            self._snapshots.setdefault(snapshot.run_id, []).append(snapshot)

    def latest_snapshot(self, run_id: str, version: str, upto: int | None = None) -> Snapshot | None:
        fitting = [s for s in self._snapshots.get(run_id, [])
                   if s.version == version and (upto is None or s.seq <= upto)]
        return max(fitting, key=lambda s: s.seq, default=None)

    def acquire_lease(self, run_id: str, holder: str, ttl_s: float) -> None:
        with self._lock:
            self.get_run(run_id)
            now = self._clock.seconds()
            current = self._leases.get(run_id)
            if current and current[0] != holder and current[1] > now and not holder_is_dead(current[0]):
                raise LeaseHeld(run_id, current[0], current[1] - now)
            self._leases[run_id] = (holder, now + ttl_s)

    def release_lease(self, run_id: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(run_id, ("",))[0] == holder:
                del self._leases[run_id]
