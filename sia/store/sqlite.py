"""SqliteEventStore: the embedded default, one SQLite file (small blobs in it) plus a folder
of large blobs.

Durability and concurrency come from SQLite itself: WAL journal, `BEGIN IMMEDIATE` so a
writer takes the write lock before it reads the last seq, a busy timeout so concurrent
writers queue instead of failing, and `(run_id, seq)` as primary key as the last line of
defence for optimistic concurrency. Triggers make the events and runs tables append-only,
and `verify` reports them missing or altered (`guard_problems`). Each event row carries a
MAC under the home's chain key and each run a keyed head (sia/store/keys.py); the key is
a file beside the database, `keys/chain.key`, never in it. The database and the key are
0600, their folders 0700.

sqlite-utils creates the schema. It is imported only when a store file is new (or older
than `SCHEMA_VERSION`, kept in `PRAGMA user_version`): importing it pulls in pandas when
pandas is installed, ~0.8 s, which would break the CLI's sub-second budget. Appends and
reads use the raw connection; `executemany` measured ~4-5x faster than `insert_all` here.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sia.core.events.canonical import GENESIS_HASH
from sia.core.events.envelope import EncodedEvent, StoredEvent, hash_is_valid, seal_batch
from sia.store.base import (
    CacheEntry,
    ConcurrencyError,
    EventStore,
    Head,
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
from sia.store.blobs import FileBlobStore, verified
from sia.store.clock import SYSTEM_CLOCK, Clock
from sia.store.home import (
    PRIVATE_FILE,
    blobs_path,
    chain_key_path,
    database_path,
    make_home_private,
    make_private_dir,
    sia_home,
)
from sia.store.keys import ChainKey, ChainKeyError, load_chain_key
from sia.store.redact import Redactor, redactor_from_environment

SCHEMA_VERSION = 4
"""v3 added the keyed chain: `events.mac`, the `heads` table, append-only `runs`; v4 the
`blobs` table (blobs put before v4 stay files, and are read as such)."""
_EVENT_COLUMNS = "run_id, seq, type, schema_version, payload, prev_hash, hash, recorded_at"
_INSERT_EVENT = (f"INSERT INTO events ({_EVENT_COLUMNS}, mac) VALUES (?,?,?,?,?,?,?,?,?)")
_PUT_HEAD = ("INSERT INTO heads (run_id, seq, hash, mac) VALUES (?,?,?,?) ON CONFLICT (run_id) "
             "DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac")

APPEND_ONLY_TRIGGERS = {
    f"{table}_no_{op.lower()}": (
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
    )
    for table in ("events", "runs") for op in ("UPDATE", "DELETE")
}
"""Name → the exact SQL SQLite keeps for it; `verify` compares the schema against this."""


class SqliteEventStore(EventStore):
    blobs: SqliteBlobStore

    def __init__(
        self,
        path: Path | str,
        blob_root: Path | str | None = None,
        busy_timeout_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        key_path: Path | str | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """`key_path` defaults to `keys/chain.key` beside the database; `redactor` None
        redacts the secrets of the process's environment."""
        self.path = Path(path)
        make_private_dir(self.path.parent)
        self.redactor = redactor_from_environment() if redactor is None else redactor
        self.notices: list[str] = []
        """What opening changed that the user should hear about (printed by the CLI)."""
        self._clock = clock
        self._lock = threading.RLock()
        try:
            _make_private_file(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path} is not a usable sia store: {exc.strerror}") from None
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self.blobs = SqliteBlobStore(Path(blob_root) if blob_root else self.path.parent / "blobs",
                                         self._conn, self.redactor)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer sia (schema v{version}); "
                                 "upgrade sia to read it")
            key_file = Path(key_path) if key_path else self.path.parent / "keys" / "chain.key"
            try:
                self.chain_key: ChainKey = load_chain_key(key_file,
                                                          create=version < SCHEMA_VERSION)
            except ChainKeyError as exc:
                raise StoreError(str(exc)) from None
            if version < SCHEMA_VERSION:
                self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable sia store: {exc}") from exc

    @classmethod
    def open_home(cls, home: Path | None = None, secret_names: tuple[str, ...] = ()
                  ) -> SqliteEventStore:
        """The home's store; the home is made private first (see `notices`).

        `secret_names` adds configured key variables (`sia.toml`'s `api_key_env`) to the
        ones redacted by their name.
        """
        home = home or sia_home()
        notices = make_home_private(home)
        store = cls(database_path(home), blobs_path(home), key_path=chain_key_path(home),
                    redactor=redactor_from_environment(secret_names))
        store.notices = notices + store.notices
        return store

    def _create_schema(self) -> None:
        """Create the schema, or bring an older one to SCHEMA_VERSION.

        A v2 database gets MACs for the rows whose plain chain verifies now, and heads for
        the runs whose whole history does. That vouches for the rows as they are at the
        upgrade, no earlier: a rewrite made before it (undetectable then, since v2 had only
        the plain chain) stays undetectable, while every change after it is caught. A run
        that fails its plain check keeps its bad rows unMACed and no head, so `verify`
        goes on naming it.
        """
        import sqlite_utils

        with self._write():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            db = sqlite_utils.Database(self._conn)
            db.table("runs").create(
                {"run_id": str, "parent_run_id": str, "fork_seq": int, "created_at": str},
                pk="run_id", not_null={"created_at"}, if_not_exists=True,
            )
            db.table("events").create(
                {"run_id": str, "seq": int, "type": str, "schema_version": int,
                 "payload": str, "prev_hash": str, "hash": str, "recorded_at": str, "mac": str},
                pk=("run_id", "seq"),
                not_null={"type", "schema_version", "payload", "prev_hash", "hash", "recorded_at"},
                if_not_exists=True,
            )
            if "mac" not in db.table("events").columns_dict:
                db.table("events").add_column("mac", str)
            # WITHOUT ROWID (which sqlite-utils cannot say): one B-tree instead of a table
            # plus its key's index, so each append's head update dirties one page, not two.
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS heads (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
                "hash TEXT NOT NULL, mac TEXT NOT NULL) WITHOUT ROWID"
            )
            db.table("effect_cache").create(
                {"key": str, "kind": str, "effect_id": str, "run_id": str,
                 "result": str, "usage": str},
                pk="key", if_not_exists=True,
            )
            db.table("snapshots").create(
                {"run_id": str, "seq": int, "version": str, "last_hash": str, "body": str},
                pk=("run_id", "version", "seq"), if_not_exists=True,
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, data BLOB NOT NULL)")
            db.table("leases").create(
                {"run_id": str, "holder": str, "expires_at": float}, pk="run_id",
                if_not_exists=True,
            )
            for name in APPEND_ONLY_TRIGGERS:
                self._conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            if version > 0:
                self._mac_verified_rows()
            for statement in APPEND_ONLY_TRIGGERS.values():
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _mac_verified_rows(self) -> None:
        """MAC each run's own rows up to its first bad one; a head only for intact runs."""
        key = self.chain_key
        for run in self.list_runs():
            prev, expected, intact = GENESIS_HASH, 1, True
            for event in self.read(run.run_id):
                if (event.seq != expected or event.prev_hash != prev
                        or not hash_is_valid(event)):
                    intact = False
                    break
                if event.run_id == run.run_id:
                    self._conn.execute("UPDATE events SET mac = ? WHERE run_id = ? AND seq = ?",
                                       (key.event_mac(event.hash), run.run_id, event.seq))
                prev, expected = event.hash, expected + 1
            if intact:
                head = self._head_of(run.run_id, expected - 1, prev)
                self._conn.execute(_PUT_HEAD, (head.run_id, head.seq, head.hash, head.mac))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement. It
        first writes every small blob put so far and not yet written (what it records may
        name them), so they commit or roll back with it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                written = self.blobs.write_pending()
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self.blobs.committed(written)

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
                (run_id, parent_run_id, fork_seq, self._clock.now()),
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
        """Insert sealed, redacted, MACed events and move the run's keyed head to the last."""
        sealed = seal_batch(self._redacted(events), run_id, seq, prev, self._clock.now())
        mac = self.chain_key.event_mac
        try:
            conn.executemany(
                _INSERT_EVENT,
                [(e.run_id, e.seq, e.type, e.schema_version, e.payload, e.prev_hash, e.hash,
                  e.recorded_at, mac(e.hash)) for e in sealed],
            )
        except sqlite3.IntegrityError as exc:
            raise ConcurrencyError(run_id, sealed[0].seq - 1 if sealed else seq, -1) from exc
        end = (sealed[-1].seq, sealed[-1].hash) if sealed else (seq, prev)
        head = self._head_of(run_id, *end)
        conn.execute(_PUT_HEAD, (head.run_id, head.seq, head.hash, head.mac))
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

    def _segment_rows(self, segment: Segment, after: int, upto: int | None,
                      columns: str) -> Iterator[tuple[Any, ...]]:
        lo, hi = segment_bounds(segment, after, upto)
        cursor = self._conn.execute(
            f"SELECT {columns} FROM events WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (segment.run_id, lo, hi if hi is not None else 2**62),
        )
        while rows := cursor.fetchmany(4096):
            yield from rows

    def _read_segment(self, segment: Segment, after: int, upto: int | None) -> Iterator[StoredEvent]:
        for row in self._segment_rows(segment, after, upto, _EVENT_COLUMNS):
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

    def _read_segment_macs(self, segment: Segment) -> Iterator[tuple[StoredEvent, str | None]]:
        for row in self._segment_rows(segment, 0, None, f"{_EVENT_COLUMNS}, mac"):
            yield StoredEvent(*row[:-1]), row[-1]

    def _head(self, run_id: str) -> Head | None:
        row = self._conn.execute("SELECT run_id, seq, hash, mac FROM heads WHERE run_id = ?",
                                 (run_id,)).fetchone()
        return Head(*row) if row else None

    def guard_problems(self) -> list[str]:
        """Append-only triggers that are missing or not the ones sia creates."""
        present = dict(self._conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())
        problems = []
        for name, sql in APPEND_ONLY_TRIGGERS.items():
            if name not in present:
                problems.append(f"append-only trigger {name} is missing")
            elif " ".join(present[name].split()) != sql:
                problems.append(f"append-only trigger {name} was altered")
        return problems

    def import_events(self, runs: Sequence[RunRecord], events: Sequence[StoredEvent]) -> None:
        with self._write() as conn:
            for run in runs:
                if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                    raise RunExists(run.run_id)
            self._refuse_secrets(events)
            conn.executemany(
                "INSERT INTO runs (run_id, parent_run_id, fork_seq, created_at) VALUES (?,?,?,?)",
                [(r.run_id, r.parent_run_id, r.fork_seq, r.created_at) for r in runs],
            )
            mac = self.chain_key.event_mac
            conn.executemany(
                _INSERT_EVENT,
                [(e.run_id, e.seq, e.type, e.schema_version, e.payload, e.prev_hash, e.hash,
                  e.recorded_at, mac(e.hash)) for e in events],
            )
            for run in runs:
                last = self.last_event(run.run_id)
                head = self._head_of(run.run_id, last.seq if last else 0,
                                     last.hash if last else GENESIS_HASH)
                conn.execute(_PUT_HEAD, (head.run_id, head.seq, head.hash, head.mac))

    # ---- cache and leases

    def cache_get(self, key: str) -> CacheEntry | None:
        row = self._conn.execute(
            "SELECT key, kind, effect_id, run_id, result, usage FROM effect_cache WHERE key = ?",
            (key,),
        ).fetchone()
        return CacheEntry(*row) if row else None

    def cache_put(self, entry: CacheEntry) -> None:
        entry = self._redacted_entry(entry)
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
                (snapshot.run_id, snapshot.seq, snapshot.version, snapshot.last_hash,
                 self.redactor.redact_document(snapshot.body)),
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
            now = self._clock.seconds()
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
        """Write the small blobs still pending (nothing put is lost), then close."""
        if self.blobs.pending():
            with self._write():
                pass
        with self._lock:
            self._conn.close()


class SqliteBlobStore(FileBlobStore):
    """The event store's blobs: those up to `INLINE_BYTES` in its database, the others files.

    A small blob is kept in memory from its put until the store's next write transaction,
    which writes it before its own rows: a blob commits with (or before) the first events that
    can name it, and is exactly as durable as they are, with no fsync of its own. An
    episode's trajectory is such a blob; as a file it cost a new inode, three fsyncs and a
    hand-off to another thread per episode (~0.7 ms of sia's CPU per episode under 32
    concurrent episodes; more on an ext4 without a journal, whose inode allocator reads every
    inode deleted in the last minutes that it passes over). Larger blobs (adapters) are
    files, durable when put: SQLite measures blobs above ~100 KB read faster from files, and
    below that faster from the database (sqlite.org/intern-v-extern-blob.html).
    """

    INLINE_BYTES = 100_000

    def __init__(self, root: Path, conn: sqlite3.Connection,
                 redactor: Redactor | None = None) -> None:
        super().__init__(root, redactor)
        self._conn = conn
        self._pending: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _write(self, sha: str, data: bytes) -> None:
        if len(data) > self.INLINE_BYTES:
            super()._write(sha, data)
            return
        with self._lock:
            self._pending.setdefault(sha, data)

    def pending(self) -> int:
        """How many small blobs are put and not yet committed."""
        with self._lock:
            return len(self._pending)

    def write_pending(self) -> list[str]:
        """Within the store's open write transaction: write the pending blobs (those already
        there are kept), and return their names for `committed`."""
        with self._lock:
            pending = list(self._pending.items())
        if pending:
            self._conn.executemany("INSERT OR IGNORE INTO blobs (sha, data) VALUES (?, ?)", pending)
        return [sha for sha, _ in pending]

    def committed(self, names: list[str]) -> None:
        """The transaction that wrote `names` committed: they are the database's now. Until
        then they stay pending, so a rolled-back transaction loses none of them."""
        with self._lock:
            for sha in names:
                self._pending.pop(sha, None)

    def get(self, sha: str) -> bytes:
        with self._lock:
            data = self._pending.get(sha)
        if data is None:
            row = self._conn.execute("SELECT data FROM blobs WHERE sha = ?", (sha,)).fetchone()
            if row is None:
                return super().get(sha)
            data = bytes(row[0])
        return verified(sha, data)

    def has(self, sha: str) -> bool:
        with self._lock:
            if sha in self._pending:
                return True
        row = self._conn.execute("SELECT 1 FROM blobs WHERE sha = ?", (sha,)).fetchone()
        return row is not None or super().has(sha)


def _make_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does: its WAL and shm files copy the mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
