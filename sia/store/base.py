"""The event store interface, its errors, and the lineage rule shared by every store.

A run's history is its ancestors' prefixes plus its own events, read by reference: a
fork records only its parent and the seq it branched at, so forking never copies and
never writes to the parent. Seq numbers continue across the lineage (a fork at seq 40
appends its first own event at 41), so every history is one contiguous, hash-chained
sequence starting at 1.

Every store also keeps, beside each event, a MAC of its hash under the home's chain key,
and per run a keyed head (sia/store/keys.py), and passes everything it records through a
Redactor (sia/store/redact.py); `verify` checks both chains. Stores read time only from
the Clock they are given (sia/store/clock.py).
"""

from __future__ import annotations

import hmac
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from sia.core.events.canonical import GENESIS_HASH
from sia.core.events.envelope import EncodedEvent, StoredEvent, hash_is_valid
from sia.store.blobs import BlobStore
from sia.store.interfaces import EffectCache, EventLog, LeaseStore, SnapshotStore
from sia.store.keys import ChainKey
from sia.store.records import CacheEntry, Head, RunRecord, Segment, Snapshot
from sia.store.redact import Redactor, SecretRefused

# Re-exported: callers import the records from here, where they lived before records.py.
__all__ = ["CacheEntry", "Head", "RunRecord", "Segment", "Snapshot"]


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class UnknownRun(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in this store (see `sia runs`)")
        self.run_id = run_id


class RunExists(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


class ConcurrencyError(StoreError):
    """Another writer appended first: the caller's view of the run is stale."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id}: expected last seq {expected}, but the log is at {actual} "
            "(another process appended to this run)"
        )
        self.run_id, self.expected, self.actual = run_id, expected, actual


class InvalidFork(StoreError):
    pass


class LeaseHeld(StoreError):
    def __init__(self, run_id: str, holder: str, expires_in: float) -> None:
        super().__init__(
            f"run {run_id} is being driven by {holder} (lease expires in {expires_in:.0f}s "
            "unless renewed); stop that process or wait"
        )
        self.run_id, self.holder = run_id, holder


class IntegrityError(StoreError):
    """The log is not what was written: a hash, a link or a seq does not check out."""

    def __init__(self, run_id: str, seq: int, reason: str) -> None:
        super().__init__(f"run {run_id} seq {seq}: {reason}")
        self.run_id, self.seq, self.reason = run_id, seq, reason


class StoreTampered(StoreError):
    """The store's own protections (append-only triggers) were removed or altered."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def lineage_segments(chain: Sequence[RunRecord]) -> list[Segment]:
    """Segments of a history, oldest first; `chain` runs from the run up to its root.

    Each ancestor contributes its own events up to the smallest fork seq below it, which
    also covers a fork of a fork taken at a seq that lies in the grandparent's range.
    """
    segments: list[Segment] = []
    cutoff: int | None = None
    for run in chain:
        first = (run.fork_seq or 0) + 1
        if cutoff is None or cutoff >= first:
            segments.append(Segment(run.run_id, first, cutoff))
        if run.fork_seq is not None:
            cutoff = run.fork_seq if cutoff is None else min(cutoff, run.fork_seq)
    segments.reverse()
    return segments


def segment_bounds(segment: Segment, after: int, upto: int | None) -> tuple[int, int | None]:
    """Seq bounds `(lo, hi)` to read from a segment: lo < seq <= hi (hi None = no end)."""
    limits = [x for x in (segment.last, upto) if x is not None]
    return max(after, segment.first - 1), (min(limits) if limits else None)


def new_holder() -> str:
    """Identify a live driver: host and pid make a dead holder detectable."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def holder_is_dead(holder: str) -> bool:
    """True when the holder ran on this host and its process is gone (e.g. kill -9)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class EventStore(EventLog, EffectCache, SnapshotStore, LeaseStore, ABC):
    """Append-only, hash-chained event logs with fork lineage, blobs, cache and leases.

    The union of the narrow interfaces in sia/store/interfaces.py, so a caller that needs
    only one of them can be handed any EventStore.
    """

    blobs: BlobStore
    chain_key: ChainKey
    redactor: Redactor

    # ---- runs and events

    @abstractmethod
    def create_run(
        self,
        run_id: str,
        events: Sequence[EncodedEvent],
        parent_run_id: str | None = None,
        fork_seq: int | None = None,
    ) -> list[StoredEvent]:
        """Create a run with its first events, atomically; a fork chains onto its parent."""

    @abstractmethod
    def append(
        self, run_id: str, events: Sequence[EncodedEvent], expected_last_seq: int
    ) -> list[StoredEvent]:
        """Append a batch atomically if the run's history ends at `expected_last_seq`."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord: ...

    @abstractmethod
    def list_runs(self) -> list[RunRecord]: ...

    @abstractmethod
    def _read_segment(self, segment: Segment, after: int, upto: int | None) -> Iterator[StoredEvent]:
        """Own events of one run with after < seq <= upto, within the segment."""

    @abstractmethod
    def _last_own(self, run_id: str) -> StoredEvent | None: ...

    @abstractmethod
    def _event_at(self, run_id: str, seq: int) -> StoredEvent | None: ...

    @abstractmethod
    def _read_segment_macs(self, segment: Segment) -> Iterator[tuple[StoredEvent, str | None]]:
        """A segment's own events with their stored MACs (None when a row has none)."""

    @abstractmethod
    def _head(self, run_id: str) -> Head | None: ...

    @abstractmethod
    def import_events(self, runs: Sequence[RunRecord], events: Sequence[StoredEvent]) -> None:
        """Insert already-sealed runs and events verbatim, atomically (used by `sia import`).

        The rows get MACs and heads under this home's key: `sia import` verifies their
        chain first. Sealed payloads cannot be redacted without breaking their hashes, so
        rows holding a secret are refused (SecretRefused) and nothing is inserted.
        """

    def guard_problems(self) -> list[str]:
        """What is wrong with the store's own protections; a store with none has none."""
        return []

    # ---- cache and leases

    @abstractmethod
    def cache_get(self, key: str) -> CacheEntry | None: ...

    @abstractmethod
    def cache_put(self, entry: CacheEntry) -> None:
        """Keep the first entry for a key: the original effect stays the one cited."""

    @abstractmethod
    def put_snapshot(self, snapshot: Snapshot) -> None: ...

    @abstractmethod
    def latest_snapshot(self, run_id: str, version: str, upto: int | None = None) -> Snapshot | None:
        """The run's newest snapshot for this reducer version at or before `upto`."""

    @abstractmethod
    def acquire_lease(self, run_id: str, holder: str, ttl_s: float) -> None:
        """Take or renew the right to drive `run_id`; LeaseHeld if a live holder has it."""

    @abstractmethod
    def release_lease(self, run_id: str, holder: str) -> None: ...

    def close(self) -> None:
        """Release resources; a no-op for stores without any."""

    # ---- derived reads, the same for every store

    def chain(self, run_id: str) -> list[RunRecord]:
        """The run and its ancestors, newest first."""
        chain = [self.get_run(run_id)]
        while chain[-1].parent_run_id is not None:
            chain.append(self.get_run(chain[-1].parent_run_id))
        return chain

    def segments(self, run_id: str) -> list[Segment]:
        return lineage_segments(self.chain(run_id))

    def read(self, run_id: str, after: int = 0, upto: int | None = None) -> Iterator[StoredEvent]:
        """The run's whole history (inherited prefix, then own events), in seq order."""
        for segment in self.segments(run_id):
            if segment.last is not None and segment.last <= after:
                continue
            if upto is not None and segment.first > upto:
                break
            yield from self._read_segment(segment, after, upto)

    def event_at(self, run_id: str, seq: int) -> StoredEvent | None:
        for segment in self.segments(run_id):
            if segment.first <= seq and (segment.last is None or seq <= segment.last):
                return self._event_at(segment.run_id, seq)
        return None

    def last_event(self, run_id: str) -> StoredEvent | None:
        """The last event of the run's history (its parent's fork point if it has none)."""
        own = self._last_own(run_id)
        if own is not None:
            return own
        run = self.get_run(run_id)
        if run.parent_run_id is None or run.fork_seq is None:
            return None
        return self.event_at(run.parent_run_id, run.fork_seq)

    def last_seq(self, run_id: str) -> int:
        last = self.last_event(run_id)
        return 0 if last is None else last.seq

    def verify(self, run_id: str) -> int:
        """Check the history's hashes, links, seqs, keyed MACs and head, and the store's guards.

        Returns the number of events. Raises IntegrityError naming the first bad seq (and
        any missing guard besides), or StoreTampered when only the guards are gone.
        """
        guards = self.guard_problems()
        try:
            count = self._verify_chain(run_id)
        except IntegrityError as exc:
            if not guards:
                raise
            raise IntegrityError(exc.run_id, exc.seq,
                                 f"{exc.reason}; also: {'; '.join(guards)}") from None
        if guards:
            raise StoreTampered(guards)
        return count

    def _verify_chain(self, run_id: str) -> int:
        key = self.chain_key
        prev_hash, expected_seq = GENESIS_HASH, 1
        for segment in self.segments(run_id):
            for event, mac in self._read_segment_macs(segment):
                where = "" if event.run_id == run_id else f" (inherited from run {event.run_id})"
                if event.seq != expected_seq:
                    raise IntegrityError(run_id, expected_seq,
                                         f"missing event (found seq {event.seq}){where}")
                if event.prev_hash != prev_hash:
                    raise IntegrityError(run_id, event.seq,
                                         f"prev_hash does not link to the previous event{where}")
                if not hash_is_valid(event):
                    raise IntegrityError(run_id, event.seq,
                                         f"hash mismatch: event {event.type} was altered{where}")
                if mac is None:
                    raise IntegrityError(run_id, event.seq, f"no keyed MAC: event {event.type} "
                                         f"was not written by this home's sia{where}")
                if not hmac.compare_digest(mac, key.event_mac(event.hash)):
                    raise IntegrityError(run_id, event.seq, f"rewritten: event {event.type} has "
                                         "a consistent sha256 chain but not this home's keyed "
                                         f"MAC (changed by something without the key){where}")
                prev_hash, expected_seq = event.hash, expected_seq + 1
        self._verify_head(run_id, expected_seq - 1, prev_hash)
        return expected_seq - 1

    def _verify_head(self, run_id: str, last_seq: int, last_hash: str) -> None:
        """The keyed head catches what a valid prefix hides: a truncated or extended tail."""
        head = self._head(run_id)
        if head is None:
            raise IntegrityError(run_id, last_seq, "no keyed head: the run was not recorded "
                                 "through this home's sia")
        if not hmac.compare_digest(head.mac, self.chain_key.head_mac(run_id, head.seq, head.hash)):
            raise IntegrityError(run_id, min(head.seq, last_seq), "the keyed head was forged")
        if head.seq > last_seq:
            raise IntegrityError(run_id, last_seq + 1, f"truncated: the keyed head says the "
                                 f"history ends at seq {head.seq}, the log ends at {last_seq}")
        if head.seq < last_seq:
            raise IntegrityError(run_id, head.seq + 1, f"extended: the keyed head says the "
                                 f"history ends at seq {head.seq}, the log goes on to {last_seq}")
        if head.hash != last_hash:
            raise IntegrityError(run_id, last_seq, "rewritten: the last event's hash is not "
                                 "the one the keyed head holds")

    # ---- what every store does before it records something

    def _redacted(self, events: Sequence[EncodedEvent]) -> list[EncodedEvent]:
        """Events with every secret value redacted from their payloads."""
        redactor = self.redactor
        if not redactor:
            return list(events)
        redacted = []
        for event in events:
            payload = redactor.redact_document(event.payload)
            redacted.append(event if payload is event.payload
                            else EncodedEvent(event.type, event.schema_version, payload))
        return redacted

    def _redacted_entry(self, entry: CacheEntry) -> CacheEntry:
        return CacheEntry(entry.key, entry.kind, entry.effect_id, entry.run_id,
                          self.redactor.redact_document(entry.result),
                          self.redactor.redact_document(entry.usage))

    def _refuse_secrets(self, events: Sequence[StoredEvent]) -> None:
        for event in events:
            name = self.redactor.holds(event.payload)
            if name is not None:
                raise SecretRefused(f"run {event.run_id} seq {event.seq} ({event.type})", name)

    def _head_of(self, run_id: str, seq: int, last_hash: str) -> Head:
        return Head(run_id, seq, last_hash, self.chain_key.head_mac(run_id, seq, last_hash))

    def chain_start(self, parent_run_id: str | None, fork_seq: int | None) -> tuple[int, str]:
        """(last seq, last hash) that a new run's first event chains onto."""
        if (parent_run_id is None) != (fork_seq is None):
            raise InvalidFork("a fork needs both a parent run and a fork seq")
        if parent_run_id is None or fork_seq is None:
            return 0, GENESIS_HASH
        point = self.fork_point(parent_run_id, fork_seq)
        return point.seq, point.hash

    def fork_point(self, parent_run_id: str, fork_seq: int) -> StoredEvent:
        """The parent's event a fork chains onto; refuses seqs outside its history."""
        last = self.last_seq(parent_run_id)
        if not 1 <= fork_seq <= last:
            raise InvalidFork(
                f"cannot fork {parent_run_id} at seq {fork_seq}: its history is seq 1..{last}"
            )
        event = self.event_at(parent_run_id, fork_seq)
        assert event is not None
        return event
