from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sia.store.sqlite import SqliteEventStore
from tests.store_conformance import EventStoreConformance


class TestSqliteEventStore(EventStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteEventStore]:
        store = SqliteEventStore(tmp_path / "sia.sqlite")
        yield store
        store.close()
