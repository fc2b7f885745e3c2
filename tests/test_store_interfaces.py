"""The narrow store interfaces: a backend with one face satisfies that one and no other."""

from __future__ import annotations

from sia.store.base import CacheEntry
from sia.store.interfaces import EffectCache, EventLog, LeaseStore, SnapshotStore
from sia.store.memory import MemoryEventStore


class DictCache:
    """A backend with only the cache face."""

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}

    def cache_get(self, key: str) -> CacheEntry | None:
        return self.entries.get(key)

    def cache_put(self, entry: CacheEntry) -> None:
        self.entries.setdefault(entry.key, entry)


def test_a_partial_backend_has_only_the_faces_it_implements() -> None:
    cache = DictCache()
    assert isinstance(cache, EffectCache)
    assert not any(isinstance(cache, face) for face in (EventLog, SnapshotStore, LeaseStore))
    assert all(isinstance(MemoryEventStore(), face)
               for face in (EventLog, EffectCache, SnapshotStore, LeaseStore))
