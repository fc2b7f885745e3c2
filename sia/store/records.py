"""The rows a store keeps beside its events: runs, heads, segments, cache entries, snapshots.

Their own module so the narrow interfaces (sia/store/interfaces.py) and the EventStore base
(sia/store/base.py) can both name them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Head:
    """Where a run's history ends (seq and hash of its last event), MACed."""

    run_id: str
    seq: int
    hash: str
    mac: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    parent_run_id: str | None
    fork_seq: int | None
    created_at: str


@dataclass(frozen=True, slots=True)
class Segment:
    """Events `first..last` (inclusive; `last` None = to the end) of `run_id`'s own log."""

    run_id: str
    first: int
    last: int | None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    kind: str
    effect_id: str
    run_id: str
    result: str
    usage: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Folded state of `run_id` at `seq` (whose event hash was `last_hash`), by reducer version."""

    run_id: str
    seq: int
    version: str
    last_hash: str
    body: str
