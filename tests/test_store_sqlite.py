from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from sia.core.events.envelope import EncodedEvent, StoredEvent, seal
from sia.store.base import CacheEntry, EventStore
from sia.store.blobs import FileBlobStore
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


class _RecordedConnection:
    """The store's connection, noting each write transaction's start in `order`."""

    def __init__(self, conn: sqlite3.Connection, order: list[str]) -> None:
        self._conn, self._order = conn, order

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.startswith("BEGIN"):
            self._order.append("BEGIN")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], threading.Event]:
    """The path of every file or folder fsynced from here on, in order (the fsyncs are real),
    and a gate that holds every fsync until it is opened (open unless a test closes it)."""
    paths: list[str] = []
    gate = threading.Event()
    gate.set()
    fsync = os.fsync

    def recorded(fd: int) -> None:
        gate.wait()
        fsync(fd)
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recorded)
    return paths, gate


def is_temp_of(path: str, blob: Path) -> bool:
    """`path` is a temp file a blob was written to before its rename to `blob`."""
    return Path(path).parent == blob.parent and Path(path).name.startswith(f".{blob.name}.tmp-")


def in_folder_of(blob: Path) -> bytes:
    """Other bytes whose blob goes in `blob`'s folder (the first two hex digits of its hash)."""
    return next(data for i in range(100_000) if hashlib.sha256(data := f"{i}".encode()).hexdigest()
                .startswith(blob.parent.name) and data != blob.read_bytes())


def test_a_blob_is_durable_before_any_transaction_that_may_refer_to_it(
        tmp_path: Path, fsynced: tuple[list[str], threading.Event]) -> None:
    """The store's blobs are made durable behind their puts (an episode's worker does not wait
    on its trajectory's fsyncs), and every write transaction first waits until each blob put
    before it is durable: its file, its name in its folder and (the first time the store writes
    in that folder) the folder's in the root. Whatever the transaction records, a power loss
    cannot leave it pointing at a blob that never reached the disk; and until the blob is
    durable its name does not exist, so no later put of the same bytes can take a name that
    a power loss would leave empty for the blob's own."""
    order, gate = fsynced
    store = SqliteEventStore(tmp_path / "sia.sqlite", blob_root=tmp_path / "blobs")
    store._conn = _RecordedConnection(store._conn, order)  # type: ignore[assignment]
    order.clear()
    gate.clear()
    sha = store.blobs.put_text("a trajectory")  # returns while its fsync is held
    blob = store.blobs.path(sha)
    assert order == [] and not blob.exists()
    assert store.blobs.get_text(sha) == "a trajectory" and store.blobs.has(sha)
    writing = threading.Thread(target=store.create_run,
                               args=("run-1", [EncodedEvent("RunStarted", 1, '{"x": 1}')]))
    writing.start()
    writing.join(timeout=0.3)
    assert writing.is_alive() and order == [], "the transaction began before its blob was durable"
    gate.set()
    writing.join(timeout=10)
    assert len(order) == 4 and is_temp_of(order[0], blob)
    assert order[1:] == [str(blob.parent), str(tmp_path / "blobs"), "BEGIN"]
    assert blob.read_text() == "a trajectory"
    order.clear()
    store.cache_put(CacheEntry(key="k", kind="episode", effect_id="k", run_id="run-1",
                               result="{}", usage="{}"))
    assert order == ["BEGIN"]
    order.clear()
    again = store.blobs.path(store.blobs.put(in_folder_of(blob)))
    store.cache_put(CacheEntry(key="k2", kind="episode", effect_id="k2", run_id="run-1",
                               result="{}", usage="{}"))
    assert len(order) == 3 and is_temp_of(order[0], again)
    assert order[1:] == [str(blob.parent), "BEGIN"]  # the root: once per folder
    store.close()


def test_blobs_of_their_own_are_durable_when_put(
        tmp_path: Path, fsynced: tuple[list[str], threading.Event]) -> None:
    """A blob store outside an event store (no transaction to wait for) is durable on each put."""
    synced, _ = fsynced
    blobs = FileBlobStore(tmp_path / "blobs")
    path = blobs.path(blobs.put(b"weights"))
    assert len(synced) == 3 and is_temp_of(synced[0], path)  # the file, before its rename
    assert synced[1:] == [str(path.parent), str(tmp_path / "blobs")]  # its folder, new: the root too
    assert path.read_bytes() == b"weights"
    blobs.put(in_folder_of(path))
    assert len(synced) == 5 and synced[-1] == str(path.parent)  # the root once per folder


def test_a_failed_blob_fsync_fails_the_transaction_and_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails an fsync (EIO) fails the write that would have referred to the blob
    (its publisher failed, and so does the transaction's own try), records nothing and leaves
    the blob's name free; the next write publishes the blob before its own transaction."""
    store = SqliteEventStore(tmp_path / "sia.sqlite", blob_root=tmp_path / "blobs")
    fsync, tried = os.fsync, []

    def failing(fd: int) -> None:
        tried.append(os.readlink(f"/proc/self/fd/{fd}"))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    sha = store.blobs.put_text("a trajectory")
    blob = store.blobs.path(sha)
    with pytest.raises(OSError, match="Input/output"):
        store.create_run("run-1", [EncodedEvent("RunStarted", 1, '{"x": 1}')])
    assert len(tried) == 2 and all(is_temp_of(path, blob) for path in tried)
    assert store.list_runs() == [] and not blob.exists()
    monkeypatch.setattr(os, "fsync", fsync)
    store.create_run("run-1", [EncodedEvent("RunStarted", 1, '{"x": 1}')])
    assert blob.read_text() == "a trajectory" and [run.run_id for run in store.list_runs()] == ["run-1"]
    store.close()
