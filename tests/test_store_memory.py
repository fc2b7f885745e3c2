from __future__ import annotations

import pytest

from sia.store.memory import MemoryEventStore
from tests.store_conformance import EventStoreConformance


class TestMemoryEventStore(EventStoreConformance):
    @pytest.fixture
    def store(self) -> MemoryEventStore:
        return MemoryEventStore()
