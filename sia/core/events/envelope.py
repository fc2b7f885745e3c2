"""The stored form of an event and the hash chain that links a run's lineage.

The store records envelopes, not typed events: `payload` is the canonical JSON text of
the event body, so the bytes that were hashed are the bytes that were stored, and a
reader can verify a row without knowing its schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from sia.core.events.canonical import sha256_hex


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event ready to append: the store assigns seq, prev_hash and hash."""

    type: str
    schema_version: int
    payload: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    run_id: str
    """The run that recorded this event (an ancestor's id for inherited events)."""
    seq: int
    type: str
    schema_version: int
    payload: str
    prev_hash: str
    hash: str
    recorded_at: str


def event_hash(
    prev_hash: str,
    run_id: str,
    seq: int,
    type_: str,
    schema_version: int,
    recorded_at: str,
    payload: str,
) -> str:
    """Hash every stored field, chained to the previous event's hash.

    Fields are joined with newlines; none but `payload` can contain one, and payload is
    last, so the joining is unambiguous.
    """
    return sha256_hex(
        f"{prev_hash}\n{run_id}\n{seq}\n{type_}\n{schema_version}\n{recorded_at}\n{payload}"
    )


def seal(
    encoded: EncodedEvent, run_id: str, seq: int, prev_hash: str, recorded_at: str
) -> StoredEvent:
    """Give an encoded event its place in a run's chain."""
    return StoredEvent(
        run_id=run_id,
        seq=seq,
        type=encoded.type,
        schema_version=encoded.schema_version,
        payload=encoded.payload,
        prev_hash=prev_hash,
        hash=event_hash(
            prev_hash, run_id, seq, encoded.type, encoded.schema_version, recorded_at,
            encoded.payload,
        ),
        recorded_at=recorded_at,
    )


def seal_batch(events: list[EncodedEvent] | tuple[EncodedEvent, ...], run_id: str, last_seq: int,
               prev_hash: str, recorded_at: str) -> list[StoredEvent]:
    """Chain a batch onto a history that ends at `last_seq` with `prev_hash`."""
    sealed = []
    for offset, encoded in enumerate(events, start=1):
        sealed.append(seal(encoded, run_id, last_seq + offset, prev_hash, recorded_at))
        prev_hash = sealed[-1].hash
    return sealed


def hash_is_valid(event: StoredEvent) -> bool:
    return event.hash == event_hash(
        event.prev_hash, event.run_id, event.seq, event.type, event.schema_version,
        event.recorded_at, event.payload,
    )
