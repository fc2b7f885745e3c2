"""Issue G, store integrity: the attack that fooled `sia verify`, replayed against the real CLI.

The attacker opened `$SIA_HOME/sia.sqlite` with `sqlite3`, dropped the append-only
triggers, rewrote another run's event and recomputed the plain sha256 chain after it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sia.core.events.canonical import canonical_json
from sia.core.events.envelope import event_hash
from sia.store.base import IntegrityError, StoreError, StoreTampered
from sia.store.conformance import encoded
from sia.store.home import make_home_private
from sia.store.sqlite import APPEND_ONLY_TRIGGERS, SqliteBlobStore, SqliteEventStore
from tests.cli import sia


def toy_run(home: Path, run_id: str) -> None:
    sia(home, "run", "--task", "toy", "--max-gen", "2", "--quiet", "--run-id", run_id)


def rewrite_and_rechain(db: Path, run_id: str, seq: int, change: dict[str, Any]) -> None:
    """Exactly the recorded attack: DROP TRIGGER, UPDATE, recompute every later hash."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    rows = conn.execute("SELECT seq, type, schema_version, payload, prev_hash, recorded_at "
                        "FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq",
                        (run_id, seq)).fetchall()
    prev = rows[0][4]
    for row_seq, type_, version, payload, _, recorded_at in rows:
        if row_seq == seq:
            payload = canonical_json({**json.loads(payload), **change})
        new_hash = event_hash(prev, run_id, row_seq, type_, version, recorded_at, payload)
        conn.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? "
                     "WHERE run_id = ? AND seq = ?", (payload, prev, new_hash, run_id, row_seq))
        prev = new_hash
    conn.commit()
    conn.close()


def first_scored(db: Path, run_id: str) -> tuple[int, dict[str, Any]]:
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT seq, payload FROM events WHERE run_id = ? AND payload LIKE "
                       "'%\"score\"%' ORDER BY seq LIMIT 1", (run_id,)).fetchone()
    conn.close()
    assert row is not None, "the toy run records no score"
    return row[0], json.loads(row[1])


def test_rewritten_scores_with_a_recomputed_chain_fail_sia_verify(tmp_path: Path) -> None:
    home = tmp_path / "home"
    toy_run(home, "victim")
    toy_run(home, "bystander")
    seq, payload = first_scored(home / "sia.sqlite", "victim")
    assert "intact" in sia(home, "verify", "victim").stdout
    rewrite_and_rechain(home / "sia.sqlite", "victim", seq, {"score": 1.0})
    result = sia(home, "verify", "victim", check=False)
    assert result.returncode != 0
    message = result.stderr.replace("\n", " ")
    assert f"run victim seq {seq}: rewritten" in message
    assert "append-only trigger events_no_update is missing" in message
    assert "intact" not in result.stdout
    bystander = sia(home, "verify", "bystander", check=False)
    assert bystander.returncode != 0 and "events_no_update is missing" in bystander.stderr


def test_dropped_triggers_alone_are_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    toy_run(home, "r")
    conn = sqlite3.connect(home / "sia.sqlite")
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DROP TRIGGER runs_no_update")
    conn.execute("CREATE TRIGGER runs_no_update BEFORE UPDATE ON runs BEGIN SELECT 1; END")
    conn.commit()
    conn.close()
    result = sia(home, "verify", "r", check=False)
    assert result.returncode != 0
    assert "append-only trigger events_no_delete is missing" in result.stderr
    assert "append-only trigger runs_no_update was altered" in result.stderr
    store = SqliteEventStore.open_home(home)
    with pytest.raises(StoreTampered) as info:
        store.verify("r")
    assert len(info.value.problems) == 2
    store.close()


def test_the_triggers_keep_the_log_append_only(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("a", encoded(2))
    conn = sqlite3.connect(tmp_path / "sia.sqlite")
    for statement in ("UPDATE events SET payload = '{}'", "DELETE FROM events",
                      "UPDATE runs SET fork_seq = 1", "DELETE FROM runs"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert store.guard_problems() == [] and store.verify("a") == 2
    store.close()


def test_changed_lineage_is_caught_by_the_chain(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("p", encoded(3))
    store.create_run("q", encoded(3))
    store.create_run("c", encoded(1, "c"), parent_run_id="p", fork_seq=3)
    conn = sqlite3.connect(tmp_path / "sia.sqlite")
    conn.execute("DROP TRIGGER runs_no_update")
    conn.execute("UPDATE runs SET parent_run_id = 'q' WHERE run_id = 'c'")
    conn.execute(APPEND_ONLY_TRIGGERS["runs_no_update"])
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError, match="run c seq 4: prev_hash does not link"):
        store.verify("c")
    store.close()


def test_a_head_rolled_back_to_an_older_genuine_one_is_caught(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("a", encoded(3))
    conn = sqlite3.connect(tmp_path / "sia.sqlite")
    saved = conn.execute("SELECT seq, hash, mac FROM heads WHERE run_id = 'a'").fetchone()
    store.append("a", encoded(2, "x"), expected_last_seq=3)
    conn.execute("UPDATE heads SET seq = ?, hash = ?, mac = ? WHERE run_id = 'a'", saved)
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError, match="run a seq 4: extended: .* ends at seq 3"):
        store.verify("a")
    store.close()


def test_a_v2_database_is_upgraded_and_its_intact_rows_vouched_for(tmp_path: Path) -> None:
    db = tmp_path / "sia.sqlite"
    store = SqliteEventStore(db)
    store.create_run("good", encoded(4))
    store.create_run("bad", encoded(4, "b"))
    store.close()
    conn = sqlite3.connect(db)
    for name in APPEND_ONLY_TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE events SET payload = '{\"reason\":\"forged\"}' "
                 "WHERE run_id = 'bad' AND seq = 3")
    conn.execute("DROP TABLE heads")
    conn.execute("ALTER TABLE events DROP COLUMN mac")
    for name in ("events_no_update", "events_no_delete"):
        conn.execute(APPEND_ONLY_TRIGGERS[name])
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    (tmp_path / "keys" / "chain.key").unlink()
    upgraded = SqliteEventStore(db)
    assert upgraded.guard_problems() == []
    assert upgraded.verify("good") == 4
    with pytest.raises(IntegrityError, match="run bad seq 3: hash mismatch"):
        upgraded.verify("bad")
    macs = sqlite3.connect(db).execute(
        "SELECT seq, mac IS NOT NULL FROM events WHERE run_id = 'bad' ORDER BY seq").fetchall()
    assert macs == [(1, 1), (2, 1), (3, 0), (4, 0)]
    upgraded.close()


def test_a_store_that_lost_its_key_refuses_to_open(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("a", encoded(1))
    store.close()
    (tmp_path / "keys" / "chain.key").unlink()
    with pytest.raises(StoreError, match="chain.key is missing.*sia export"):
        SqliteEventStore(tmp_path / "sia.sqlite")


def test_a_damaged_key_is_a_clear_error(tmp_path: Path) -> None:
    SqliteEventStore(tmp_path / "sia.sqlite").close()
    (tmp_path / "keys" / "chain.key").write_bytes(b"short")
    with pytest.raises(StoreError, match="chain.key is damaged \\(5 bytes, not 32\\)"):
        SqliteEventStore(tmp_path / "sia.sqlite")


def test_processes_opening_a_new_home_at_once_agree_on_one_key(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from sia.store.keys import load_chain_key; "
            "print(load_chain_key(Path(sys.argv[1]), create=True).event_mac('0' * 64))")
    children = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "keys" / "chain.key")],
                                 stdout=subprocess.PIPE, text=True) for _ in range(6)]
    macs = {child.communicate(timeout=60)[0].strip() for child in children}
    assert len(macs) == 1 and len(macs.pop()) == 64
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["chain.key"]


def test_another_key_does_not_vouch_for_the_rows(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("a", encoded(2))
    store.close()
    (tmp_path / "keys" / "chain.key").write_bytes(os.urandom(32))
    with pytest.raises(IntegrityError, match="run a seq 1: rewritten"):
        SqliteEventStore(tmp_path / "sia.sqlite").verify("a")


def test_export_import_round_trip_verifies_under_the_new_homes_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    toy_run(a, "moved")
    fork = sia(a, "fork", "moved", "--at", "5").stdout.strip().splitlines()[-1]
    sia(a, "resume", fork, "--quiet")
    sia(a, "export", fork, "-o", str(tmp_path / "moved.jsonl"))
    assert "events verified" in sia(b, "import", str(tmp_path / "moved.jsonl")).stdout
    assert "intact" in sia(b, "verify", fork).stdout
    assert "intact" in sia(b, "verify", "moved").stdout
    key = (a / "keys" / "chain.key").read_bytes()
    assert key != (b / "keys" / "chain.key").read_bytes()
    recorded = [p for p in a.rglob("*") if p.is_file() and p.parent.name != "keys"]
    for path in (tmp_path / "moved.jsonl", *recorded):
        data = path.read_bytes()
        assert key not in data and key.hex().encode() not in data, path


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_the_home_and_the_store_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    toy_run(home, "r")
    store = SqliteEventStore.open_home(home)
    store.blobs.put(os.urandom(SqliteBlobStore.INLINE_BYTES + 1))  # large: a file of its own
    store.close()
    found = modes(home)
    assert found["."] == 0o700
    for name in ("sia.sqlite", "keys/chain.key"):
        assert found[name] == 0o600, name
    store_paths = {k: v for k, v in found.items()
                   if k == "keys" or k.startswith(("blobs", "keys/"))}
    assert store_paths and len(store_paths) > 3
    for name, mode in store_paths.items():
        is_dir = (home / name).is_dir()
        assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))


def test_a_home_open_to_others_is_made_private_and_said_so_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    store = SqliteEventStore.open_home(home)
    assert store.notices == [f"{home} was open to other users (mode 0755); made it private (0700)"]
    store.close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    again = SqliteEventStore.open_home(home)
    assert again.notices == []
    again.close()
    assert make_home_private(home) == []


def test_the_write_ahead_log_is_as_private_as_the_database(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "sia.sqlite")
    store.create_run("a", encoded(1))
    for name in ("sia.sqlite-wal", "sia.sqlite-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.close()


def test_a_database_file_open_to_others_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "sia.sqlite"
    SqliteEventStore(db).close()
    os.chmod(db, 0o644)
    SqliteEventStore(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
