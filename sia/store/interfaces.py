"""The four narrow faces of a store, each the methods its callers use.

The runtime and the read side (replay, views, reports, the dashboard, the CLI) need the
event log; effect handlers need the cache; folding needs snapshots; a driver needs a lease.
A caller that asks for one of these can be handed any object with those methods, so a new
backend can start with one face. `EventStore` (sia/store/base.py) implements all four.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from sia.core.events.envelope import EncodedEvent, StoredEvent
from sia.store.records import CacheEntry, RunRecord, Snapshot


@runtime_checkable
class EventLog(Protocol):
    """Append-only, hash-chained run histories with fork lineage."""

    def create_run(
        self,
        run_id: str,
        events: Sequence[EncodedEvent],
        parent_run_id: str | None = None,
        fork_seq: int | None = None,
    ) -> list[StoredEvent]: ...

    def append(
        self, run_id: str, events: Sequence[EncodedEvent], expected_last_seq: int
    ) -> list[StoredEvent]: ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def list_runs(self) -> list[RunRecord]: ...

    def chain(self, run_id: str) -> list[RunRecord]: ...

    def read(self, run_id: str, after: int = 0, upto: int | None = None) -> Iterator[StoredEvent]: ...

    def event_at(self, run_id: str, seq: int) -> StoredEvent | None: ...

    def last_seq(self, run_id: str) -> int: ...

    def verify(self, run_id: str) -> int: ...

    def import_events(self, runs: Sequence[RunRecord], events: Sequence[StoredEvent]) -> None: ...


@runtime_checkable
class EffectCache(Protocol):
    """Results of effects by cache key; the first entry for a key is the one kept."""

    def cache_get(self, key: str) -> CacheEntry | None: ...

    def cache_put(self, entry: CacheEntry) -> None: ...


@runtime_checkable
class SnapshotStore(Protocol):
    """Folded states by run, seq and reducer version."""

    def put_snapshot(self, snapshot: Snapshot) -> None: ...

    def latest_snapshot(self, run_id: str, version: str, upto: int | None = None
                        ) -> Snapshot | None: ...


@runtime_checkable
class LeaseStore(Protocol):
    """The right to drive a run, held by one live holder until its ttl runs out."""

    def acquire_lease(self, run_id: str, holder: str, ttl_s: float) -> None: ...

    def release_lease(self, run_id: str, holder: str) -> None: ...
