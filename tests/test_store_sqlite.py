from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sia.core.events.envelope import EncodedEvent, StoredEvent, seal
from sia.store.base import ConcurrencyError, EventStore
from sia.store.blobs import BlobCorrupt, FileBlobStore
from sia.store.clock import Clock
from sia.store.conformance import EventStoreConformance
from sia.store.redact import Redactor
from sia.store.sqlite import APPEND_ONLY_TRIGGERS, SqliteBlobStore, SqliteEventStore

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


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path of every file or folder fsynced from here on, in order (the fsyncs are real)."""
    paths: list[str] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        fsync(fd)
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recorded)
    return paths


def is_temp_of(path: str, blob: Path) -> bool:
    """`path` is a temp file a blob was written to before its rename to `blob`."""
    return Path(path).parent == blob.parent and Path(path).name.startswith(f".{blob.name}.tmp-")


def in_folder_of(blob: Path) -> bytes:
    """Other bytes whose blob goes in `blob`'s folder (the first two hex digits of its hash)."""
    return next(data for i in range(100_000) if hashlib.sha256(data := f"{i}".encode()).hexdigest()
                .startswith(blob.parent.name) and data != blob.read_bytes())


def other_store(tmp_path: Path) -> SqliteEventStore:
    """A second store on the same files: it sees what the first has committed, nothing else."""
    return SqliteEventStore(tmp_path / "sia.sqlite", blob_root=tmp_path / "blobs")


def test_a_small_blob_commits_with_the_next_write_and_no_fsync_of_its_own(
        tmp_path: Path, fsynced: list[str]) -> None:
    """An episode's trajectory is put by its worker and named by the events the next write
    transaction records: it is written by that transaction, so it is exactly as durable as
    they are, with no file, inode or fsync of its own."""
    store, reader = other_store(tmp_path), other_store(tmp_path)
    fsynced.clear()  # the home's new key
    sha = store.blobs.put_text("a trajectory")
    assert store.blobs.get_text(sha) == "a trajectory" and store.blobs.has(sha)
    assert not reader.blobs.has(sha), "a blob was written before any transaction"
    store.create_run("run-1", [EncodedEvent("RunStarted", 1, json.dumps({"trajectory": sha}))])
    assert reader.blobs.get_text(sha) == "a trajectory"
    assert store.blobs.pending() == 0
    assert fsynced == [] and not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
    store.close()
    reader.close()


def test_a_rolled_back_write_keeps_its_blobs_for_the_next(tmp_path: Path) -> None:
    store, reader = other_store(tmp_path), other_store(tmp_path)
    store.create_run("run-1", [EncodedEvent("RunStarted", 1, "{}")])
    sha = store.blobs.put_text("a trajectory")
    with pytest.raises(ConcurrencyError):
        store.append("run-1", [EncodedEvent("EpisodeRecorded", 1, json.dumps({"t": sha}))],
                     expected_last_seq=7)
    assert not reader.blobs.has(sha) and store.blobs.get_text(sha) == "a trajectory"
    store.append("run-1", [EncodedEvent("EpisodeRecorded", 1, json.dumps({"t": sha}))],
                 expected_last_seq=1)
    assert reader.blobs.get_text(sha) == "a trajectory"
    store.close()
    reader.close()


def test_blobs_put_after_the_last_write_are_written_at_close(tmp_path: Path) -> None:
    store = other_store(tmp_path)
    sha = store.blobs.put(b"harness source")
    store.close()
    reopened = other_store(tmp_path)
    assert reopened.blobs.get(sha) == b"harness source"
    reopened.close()


def test_a_large_blob_is_a_file_durable_when_put(tmp_path: Path, fsynced: list[str]) -> None:
    store, reader = other_store(tmp_path), other_store(tmp_path)
    fsynced.clear()  # the home's new key
    data = os.urandom(SqliteBlobStore.INLINE_BYTES + 1)
    sha = store.blobs.put(data)
    path = store.blobs.path(sha)
    assert len(fsynced) == 3 and is_temp_of(fsynced[0], path)  # the file, before its rename
    assert fsynced[1:] == [str(path.parent), str(tmp_path / "blobs")]
    assert path.read_bytes() == data and reader.blobs.get(sha) == data
    store.close()
    reader.close()


def test_blob_files_of_an_older_home_are_read(tmp_path: Path) -> None:
    """Before schema v4 every blob was a file; a store of today reads them as they are."""
    sha = FileBlobStore(tmp_path / "blobs").put(b"weights")
    store = other_store(tmp_path)
    assert store.blobs.get(sha) == b"weights" and store.blobs.has(sha)
    store.close()


def test_a_blob_altered_in_the_database_is_refused(tmp_path: Path) -> None:
    store = other_store(tmp_path)
    sha = store.blobs.put(b"harness source")
    store.close()
    with closing(sqlite3.connect(tmp_path / "sia.sqlite")) as conn, conn:
        conn.execute("UPDATE blobs SET data = ? WHERE sha = ?", (b"harness sourcE", sha))
    store = other_store(tmp_path)
    with pytest.raises(BlobCorrupt):
        store.blobs.get(sha)
    store.close()


def test_blobs_of_their_own_are_durable_when_put(tmp_path: Path, fsynced: list[str]) -> None:
    """A blob store outside an event store (no transaction to join) is durable on each put."""
    blobs = FileBlobStore(tmp_path / "blobs")
    path = blobs.path(blobs.put(b"weights"))
    assert len(fsynced) == 3 and is_temp_of(fsynced[0], path)  # the file, before its rename
    assert fsynced[1:] == [str(path.parent), str(tmp_path / "blobs")]  # its folder, new: the root too
    assert path.read_bytes() == b"weights"
    blobs.put(in_folder_of(path))
    assert len(fsynced) == 5 and fsynced[-1] == str(path.parent)  # the root once per folder
