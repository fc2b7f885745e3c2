from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sia.core.events.envelope import EncodedEvent, StoredEvent, seal
from sia.store.base import EventStore
from sia.store.clock import Clock
from sia.store.conformance import EventStoreConformance
from sia.store.redact import Redactor
from sia.store.sqlite import APPEND_ONLY_TRIGGERS, SqliteEventStore

_COLUMNS = "run_id, seq, type, schema_version, payload, prev_hash, hash, recorded_at"


class TestSqliteEventStore(EventStoreConformance):
    def make_store(self, redactor: Redactor, clock: Clock) -> SqliteEventStore:
        return SqliteEventStore(self.workdir / "sia.sqlite", redactor=redactor, clock=clock)

    def outsider_rewrite(self, store: EventStore, run_id: str, seq: int, payload: str) -> None:
        assert isinstance(store, SqliteEventStore)
        with outsider(store.path) as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE run_id = ? AND seq >= ? "
                                "ORDER BY seq", (run_id, seq)).fetchall()
            prev = rows[0][5]
            for row in rows:
                old = StoredEvent(*row)
                new = seal(EncodedEvent(old.type, old.schema_version,
                                        payload if old.seq == seq else old.payload),
                           run_id, old.seq, prev, old.recorded_at)
                conn.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? "
                             "WHERE run_id = ? AND seq = ?",
                             (new.payload, new.prev_hash, new.hash, run_id, old.seq))
                prev = new.hash

    def outsider_truncate(self, store: EventStore, run_id: str, keep: int) -> None:
        assert isinstance(store, SqliteEventStore)
        with outsider(store.path) as conn:
            conn.execute("DELETE FROM events WHERE run_id = ? AND seq > ?", (run_id, keep))

    def outsider_append(self, store: EventStore, event: StoredEvent) -> None:
        assert isinstance(store, SqliteEventStore)
        with outsider(store.path) as conn:
            conn.execute(f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                         (event.run_id, event.seq, event.type, event.schema_version,
                          event.payload, event.prev_hash, event.hash, event.recorded_at))


class outsider:
    """A plain sqlite3 connection that lifts the append-only triggers, writes, and puts them
    back exactly as sia made them, so only the keyed chain can tell."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        for name in APPEND_ONLY_TRIGGERS:
            self.conn.execute(f"DROP TRIGGER {name}")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        with closing(self.conn):
            for statement in APPEND_ONLY_TRIGGERS.values():
                self.conn.execute(statement)
            self.conn.execute("COMMIT")
