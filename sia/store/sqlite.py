"""SqliteEventStore: the embedded default, one SQLite file plus a blob folder.

Durability and concurrency come from SQLite itself: WAL journal, `BEGIN IMMEDIATE` so a
writer takes the write lock before it reads the last seq, a busy timeout so concurrent
writers queue instead of failing, and `(run_id, seq)` as primary key as the last line of
defence for optimistic concurrency. Triggers make the events table append-only.

sqlite-utils creates the schema. It is imported only when a store file is new (or older
than `SCHEMA_VERSION`, kept in `PRAGMA user_version`): importing it pulls in pandas when
pandas is installed, ~0.8 s, which would break the CLI's sub-second budget. Appends and
reads use the raw connection; `executemany` measured ~4-5x faster than `insert_all` here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sia.events.canonical import GENESIS_HASH
from sia.events.envelope import EncodedEvent, StoredEvent, seal_batch
from sia.store.base import (
    CacheEntry,
    ConcurrencyError,
    EventStore,
    LeaseHeld,
    RunExists,
    RunRecord,
    Segment,
    Snapshot,
    StoreError,
    UnknownRun,
    holder_is_dead,
    segment_bounds,
)
from sia.store.blobs import FileBlobStore
from sia.store.clock import utc_now
from sia.store.home import blobs_path, database_path, sia_home

SCHEMA_VERSION = 2
_EVENT_COLUMNS = "run_id, seq, type, schema_version, payload, prev_hash, hash, recorded_at"

_APPEND_ONLY = tuple(
    f"CREATE TRIGGER IF NOT EXISTS events_no_{op.lower()} BEFORE {op} ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
    for op in ("UPDATE", "DELETE")
)


class SqliteEventStore(EventStore):
    def __init__(
        self,
        path: Path | str,
        blob_root: Path | str | None = None,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blobs = FileBlobStore(Path(blob_root) if blob_root else self.path.parent / "blobs")
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer sia (schema v{version}); "
                                 "upgrade sia to read it")
            if version < SCHEMA_VERSION:
                self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable sia store: {exc}") from exc

    @classmethod
    def open_home(cls, home: Path | None = None) -> SqliteEventStore:
        home = home or sia_home()
        return cls(database_path(home), blobs_path(home))

    def _create_schema(self) -> None:
        import sqlite_utils

        with self._write():
            db = sqlite_utils.Database(self._conn)
            db["runs"].create(
                {"run_id": str, "parent_run_id": str, "fork_seq": int, "created_at": str},
                pk="run_id", not_null={"created_at"}, if_not_exists=True,
            )
            db["events"].create(
                {"run_id": str, "seq": int, "type": str, "schema_version": int,
                 "payload": str, "prev_hash": str, "hash": str, "recorded_at": str},
                pk=("run_id", "seq"),
                not_null={"type", "schema_version", "payload", "prev_hash", "hash", "recorded_at"},
                if_not_exists=True,
            )
            db["effect_cache"].create(
                {"key": str, "kind": str, "effect_id": str, "run_id": str,
                 "result": str, "usage": str},
                pk="key", if_not_exists=True,
            )
            db["snapshots"].create(
                {"run_id": str, "seq": int, "version": str, "last_hash": str, "body": str},
                pk=("run_id", "version", "seq"), if_not_exists=True,
            )
            db["leases"].create(
                {"run_id": str, "holder": str, "expires_at": float}, pk="run_id",
                if_not_exists=True,
            )
            for statement in _APPEND_ONLY:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- runs and events

    def create_run(
        self,
        run_id: str,
        events: Sequence[EncodedEvent],
        parent_run_id: str | None = None,
        fork_seq: int | None = None,
    ) -> list[StoredEvent]:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise RunExists(run_id)
            seq, prev = self.chain_start(parent_run_id, fork_seq)
            conn.execute(
                "INSERT INTO runs (run_id, parent_run_id, fork_seq, created_at) VALUES (?,?,?,?)",
                (run_id, parent_run_id, fork_seq, self._clock()),
            )
            return self._insert(conn, run_id, events, seq, prev)

    def append(
        self, run_id: str, events: Sequence[EncodedEvent], expected_last_seq: int
    ) -> list[StoredEvent]:
        with self._write() as conn:
            last = self.last_event(run_id)
            actual = 0 if last is None else last.seq
            if actual != expected_last_seq:
                raise ConcurrencyError(run_id, expected_last_seq, actual)
            return self._insert(conn, run_id, events, actual, last.hash if last else GENESIS_HASH)

    def _insert(
        self, conn: sqlite3.Connection, run_id: str, events: Sequence[EncodedEvent],
        seq: int, prev: str,
    ) -> list[StoredEvent]:
        sealed = seal_batch(list(events), run_id, seq, prev, self._clock())
        try:
            conn.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                [(e.run_id, e.seq, e.type, e.schema_version, e.payload, e.prev_hash, e.hash,
                  e.recorded_at) for e in sealed],
            )
        except sqlite3.IntegrityError as exc:
            raise ConcurrencyError(run_id, sealed[0].seq - 1 if sealed else seq, -1) from exc
        return sealed

    def get_run(self, run_id: str) -> RunRecord:
        row = self._conn.execute(
            "SELECT run_id, parent_run_id, fork_seq, created_at FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise UnknownRun(run_id)
        return RunRecord(*row)

    def list_runs(self) -> list[RunRecord]:
        rows = self._conn.execute(
            "SELECT run_id, parent_run_id, fork_seq, created_at FROM runs "
            "ORDER BY created_at, run_id"
        )
        return [RunRecord(*row) for row in rows]

    def _read_segment(self, segment: Segment, after: int, upto: int | None) -> Iterator[StoredEvent]:
        lo, hi = segment_bounds(segment, after, upto)
        cursor = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE run_id = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq",
            (segment.run_id, lo, hi if hi is not None else 2**62),
        )
        while rows := cursor.fetchmany(4096):
            for row in rows:
                yield StoredEvent(*row)

    def _last_own(self, run_id: str) -> StoredEvent | None:
        self.get_run(run_id)
        row = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return StoredEvent(*row) if row else None

    def _event_at(self, run_id: str, seq: int) -> StoredEvent | None:
        row = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE run_id = ? AND seq = ?", (run_id, seq)
        ).fetchone()
        return StoredEvent(*row) if row else None

    def import_events(self, runs: Sequence[RunRecord], events: Sequence[StoredEvent]) -> None:
        with self._write() as conn:
            for run in runs:
                if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                    raise RunExists(run.run_id)
            conn.executemany(
                "INSERT INTO runs (run_id, parent_run_id, fork_seq, created_at) VALUES (?,?,?,?)",
                [(r.run_id, r.parent_run_id, r.fork_seq, r.created_at) for r in runs],
            )
            conn.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                [(e.run_id, e.seq, e.type, e.schema_version, e.payload, e.prev_hash, e.hash,
                  e.recorded_at) for e in events],
            )

    # ---- cache and leases

    def cache_get(self, key: str) -> CacheEntry | None:
        row = self._conn.execute(
            "SELECT key, kind, effect_id, run_id, result, usage FROM effect_cache WHERE key = ?",
            (key,),
        ).fetchone()
        return CacheEntry(*row) if row else None

    def cache_put(self, entry: CacheEntry) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO effect_cache (key, kind, effect_id, run_id, result, usage) "
                "VALUES (?,?,?,?,?,?)",
                (entry.key, entry.kind, entry.effect_id, entry.run_id, entry.result, entry.usage),
            )

    def put_snapshot(self, snapshot: Snapshot) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (run_id, seq, version, last_hash, body) "
                "VALUES (?,?,?,?,?)",
                (snapshot.run_id, snapshot.seq, snapshot.version, snapshot.last_hash, snapshot.body),
            )

    def latest_snapshot(self, run_id: str, version: str, upto: int | None = None) -> Snapshot | None:
        row = self._conn.execute(
            "SELECT run_id, seq, version, last_hash, body FROM snapshots "
            "WHERE run_id = ? AND version = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
            (run_id, version, upto if upto is not None else 2**62),
        ).fetchone()
        return Snapshot(*row) if row else None

    def acquire_lease(self, run_id: str, holder: str, ttl_s: float) -> None:
        with self._write() as conn:
            self.get_run(run_id)
            now = time.time()
            row = conn.execute(
                "SELECT holder, expires_at FROM leases WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row and row[0] != holder and row[1] > now and not holder_is_dead(row[0]):
                raise LeaseHeld(run_id, row[0], row[1] - now)
            conn.execute(
                "INSERT OR REPLACE INTO leases (run_id, holder, expires_at) VALUES (?,?,?)",
                (run_id, holder, now + ttl_s),
            )

    def release_lease(self, run_id: str, holder: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE run_id = ? AND holder = ?", (run_id, holder))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
