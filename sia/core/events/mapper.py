"""Mapping between typed events and stored envelopes (the codec layer).

Decoding an up-to-date row is a single pydantic `model_validate_json` over the stored
text (parsed in Rust), which keeps folding a 100k-event run well under a second; only
rows from an older schema take the slower dict path through the upcasters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from pydantic import ValidationError

from sia.core.events.canonical import canonical_json
from sia.core.events.envelope import EncodedEvent, StoredEvent
from sia.core.events.types import EVENT_CLASSES, BaseEvent, Event
from sia.core.events.upcasting import UPCASTERS, Upcasters


class EventDecodeError(ValueError):
    """A stored row does not decode to a known, valid event."""


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A typed event with its place in the log: what reducers fold."""

    run_id: str
    seq: int
    hash: str
    prev_hash: str
    event: Event


class EventMapper:
    def __init__(
        self,
        classes: dict[str, type[BaseEvent]] | None = None,
        upcasters: Upcasters | None = None,
    ) -> None:
        self.classes = EVENT_CLASSES if classes is None else classes
        self.upcasters = UPCASTERS if upcasters is None else upcasters

    def encode(self, event: BaseEvent) -> EncodedEvent:
        body = event.model_dump(mode="json", exclude={"type"})
        return EncodedEvent(type=event.type, schema_version=event.schema_version,
                            payload=canonical_json(body))

    def decode(self, stored: StoredEvent) -> RecordedEvent:
        cls = self.classes.get(stored.type)
        if cls is None:
            raise EventDecodeError(
                f"run {stored.run_id} seq {stored.seq}: unknown event type {stored.type!r}"
            )
        try:
            if stored.schema_version == cls.schema_version:
                event = cls.model_validate_json(stored.payload)
            else:
                payload = self.upcasters.upcast(
                    stored.type, stored.schema_version, cls.schema_version,
                    json.loads(stored.payload),
                )
                event = cls.model_validate(payload)
        except (ValidationError, ValueError) as exc:
            raise EventDecodeError(
                f"run {stored.run_id} seq {stored.seq}: {stored.type} does not decode: {exc}"
            ) from exc
        # Every registered class is a member of the Event union (EVENT_CLASSES lists BaseEvent's subclasses).
        return RecordedEvent(stored.run_id, stored.seq, stored.hash, stored.prev_hash,
                             cast(Event, event))


MAPPER = EventMapper()
