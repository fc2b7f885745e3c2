from __future__ import annotations

import pytest

from sia.core.events.envelope import EncodedEvent, StoredEvent, seal
from sia.store.base import EventStore
from sia.store.clock import Clock
from sia.store.conformance import EventStoreConformance
from sia.store.memory import MemoryEventStore
from sia.store.redact import Redactor


class TestMemoryEventStore(EventStoreConformance):
    def make_store(self, redactor: Redactor, clock: Clock) -> MemoryEventStore:
        return MemoryEventStore(clock=clock, redactor=redactor)

    def outsider_rewrite(self, store: EventStore, run_id: str, seq: int, payload: str) -> None:
        assert isinstance(store, MemoryEventStore)
        own = store._events[run_id]
        base = own[0].seq
        prev = own[seq - base].prev_hash
        for index in range(seq - base, len(own)):
            old = own[index]
            body = payload if old.seq == seq else old.payload
            own[index] = _reseal(old, body, prev)
            prev = own[index].hash

    def outsider_truncate(self, store: EventStore, run_id: str, keep: int) -> None:
        assert isinstance(store, MemoryEventStore)
        store._events[run_id] = [e for e in store._events[run_id] if e.seq <= keep]

    def outsider_append(self, store: EventStore, event: StoredEvent) -> None:
        assert isinstance(store, MemoryEventStore)
        store._events[event.run_id].append(event)


def _reseal(old: StoredEvent, payload: str, prev: str) -> StoredEvent:
    return seal(EncodedEvent(old.type, old.schema_version, payload), old.run_id, old.seq, prev,
                old.recorded_at)


def test_default_redactor_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-0123456789abcdef")
    store = MemoryEventStore()
    assert "SOME_SERVICE_TOKEN" in store.redactor.names
    assert store.blobs.get_text(store.blobs.put_text("tok-0123456789abcdef")) == \
        "[redacted:SOME_SERVICE_TOKEN]"
    assert MemoryEventStore(redactor=Redactor.none()).redactor.names == []
