"""The conformance suite every EventStore must pass, shipped so another backend can prove itself.

To prove a new store, subclass `EventStoreConformance` in a `Test…` class in your tests,
implement `make_store(redactor, clock)` (a fresh, empty store under `self.workdir`, a
private temporary directory; stores it opens are closed after each test) and the three
`outsider_*` methods (what an attacker who can write the store's rows, but does not hold its
chain key, does to them), then run pytest on that file. Every test drives time through the
`ManualClock` it hands `make_store`, so lease expiry is tested without sleeping.

This module needs pytest (the `test` extra); nothing else in sia imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest

from sia.core.events.canonical import GENESIS_HASH
from sia.core.events.envelope import EncodedEvent, StoredEvent, seal, seal_batch
from sia.store.base import (
    CacheEntry,
    ConcurrencyError,
    EventStore,
    IntegrityError,
    InvalidFork,
    LeaseHeld,
    RunExists,
    RunRecord,
    Snapshot,
    UnknownRun,
)
from sia.store.blobs import BlobMissing
from sia.store.clock import Clock, ManualClock
from sia.store.interfaces import EffectCache, EventLog, LeaseStore, SnapshotStore
from sia.store.redact import Redactor, SecretRefused

CANARY = "sk-canary-0123456789abcdefghijklmnopqrstuvwxyz"
CANARY_ENV = "CANARY_API_KEY"
MARK = f"[redacted:{CANARY_ENV}]"


def encoded(n: int, tag: str = "e") -> list[EncodedEvent]:
    return [EncodedEvent("RunPaused", 1, f'{{"reason":"{tag}{i}"}}') for i in range(n)]


T = TypeVar("T")


def present(value: T | None) -> T:
    """`value`, which the test expects the store to have found."""
    assert value is not None
    return value


class EventStoreConformance(ABC):
    workdir: Path
    clock: ManualClock

    @abstractmethod
    def make_store(self, redactor: Redactor, clock: Clock) -> EventStore:
        """A fresh store (under `self.workdir` if it keeps files) reading time from `clock`."""

    @abstractmethod
    def outsider_rewrite(self, store: EventStore, run_id: str, seq: int, payload: str) -> None:
        """Replace one own event's payload and re-hash every later own event (plain sha256)."""

    @abstractmethod
    def outsider_truncate(self, store: EventStore, run_id: str, keep: int) -> None:
        """Delete the run's own events after seq `keep`."""

    @abstractmethod
    def outsider_append(self, store: EventStore, event: StoredEvent) -> None:
        """Add a correctly sealed (plain sha256) event row, as a writer without the key can."""

    @pytest.fixture(autouse=True)
    def _fresh_workdir_and_clock(self, tmp_path: Path) -> Iterator[None]:
        self.workdir = tmp_path
        self.clock = ManualClock()
        self._opened: list[EventStore] = []
        yield
        for store in self._opened:
            store.close()

    def open_store(self, redactor: Redactor | None = None) -> EventStore:
        """A store from `make_store` on this test's clock (no redaction unless given)."""
        store = self.make_store(Redactor.none() if redactor is None else redactor, self.clock)
        self._opened.append(store)
        return store

    @pytest.fixture
    def store(self) -> EventStore:
        return self.open_store()

    # ---------------------------------------------------------------- interfaces

    def test_store_has_every_narrow_interface(self, store: EventStore) -> None:
        for face in (EventLog, EffectCache, SnapshotStore, LeaseStore):
            assert isinstance(store, face), face.__name__

    # ---------------------------------------------------------------- ordering

    def test_create_and_read_in_order(self, store: EventStore) -> None:
        store.create_run("a", encoded(3))
        store.append("a", encoded(2, "x"), expected_last_seq=3)
        events = list(store.read("a"))
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))
        assert events[3].payload == '{"reason":"x0"}'
        assert store.last_seq("a") == 5
        assert store.verify("a") == 5

    def test_read_window(self, store: EventStore) -> None:
        store.create_run("a", encoded(10))
        assert [e.seq for e in store.read("a", after=3, upto=6)] == [4, 5, 6]
        assert [e.seq for e in store.read("a", after=9)] == [10]
        assert present(store.event_at("a", 7)).seq == 7
        assert store.event_at("a", 11) is None

    def test_unknown_and_duplicate_runs(self, store: EventStore) -> None:
        with pytest.raises(UnknownRun, match="nope"):
            list(store.read("nope"))
        with pytest.raises(UnknownRun):
            store.append("nope", encoded(1), expected_last_seq=0)
        store.create_run("a", encoded(1))
        with pytest.raises(RunExists):
            store.create_run("a", encoded(1))

    # ---------------------------------------------------------------- atomicity and concurrency

    def test_batch_is_atomic(self, store: EventStore) -> None:
        store.create_run("a", encoded(2))

        def broken() -> Iterator[EncodedEvent]:
            yield from encoded(2, "ok")
            raise RuntimeError("encoder died mid-batch")

        with pytest.raises(RuntimeError):
            store.append("a", list(broken()), expected_last_seq=2)
        assert store.last_seq("a") == 2
        store.append("a", encoded(3, "y"), expected_last_seq=2)
        assert [e.seq for e in store.read("a")] == [1, 2, 3, 4, 5]

    def test_stale_writer_gets_concurrency_error(self, store: EventStore) -> None:
        store.create_run("a", encoded(2))
        store.append("a", encoded(1, "first"), expected_last_seq=2)
        with pytest.raises(ConcurrencyError, match="expected last seq 2, but the log is at 3"):
            store.append("a", encoded(5, "second"), expected_last_seq=2)
        assert store.last_seq("a") == 3
        assert store.verify("a") == 3

    # ---------------------------------------------------------------- lineage

    def test_fork_reads_parent_prefix_by_reference(self, store: EventStore) -> None:
        store.create_run("p", encoded(6))
        parent_before = list(store.read("p"))
        store.create_run("c", encoded(2, "c"), parent_run_id="p", fork_seq=4)
        child = list(store.read("c"))
        assert [e.seq for e in child] == [1, 2, 3, 4, 5, 6]
        assert child[:4] == parent_before[:4]
        assert [e.run_id for e in child] == ["p"] * 4 + ["c"] * 2
        assert child[4].prev_hash == parent_before[3].hash
        assert list(store.read("p")) == parent_before
        assert store.verify("c") == 6
        store.append("c", encoded(1, "z"), expected_last_seq=6)
        assert store.last_seq("p") == 6 and store.last_seq("c") == 7

    def test_fork_of_fork_inside_grandparent_range(self, store: EventStore) -> None:
        store.create_run("a", encoded(10))
        store.create_run("b", encoded(3, "b"), parent_run_id="a", fork_seq=8)
        store.create_run("c", encoded(2, "c"), parent_run_id="b", fork_seq=5)
        history = list(store.read("c"))
        assert [e.seq for e in history] == [1, 2, 3, 4, 5, 6, 7]
        assert [e.run_id for e in history] == ["a"] * 5 + ["c"] * 2
        assert store.verify("c") == 7

    def test_deep_fork_chain(self, store: EventStore) -> None:
        store.create_run("r0", encoded(2))
        for depth in range(1, 25):
            parent = f"r{depth - 1}"
            store.create_run(f"r{depth}", encoded(1, f"d{depth}"), parent_run_id=parent,
                             fork_seq=store.last_seq(parent))
        history = list(store.read("r24"))
        assert [e.seq for e in history] == list(range(1, 27))
        assert store.verify("r24") == 26
        assert len(store.chain("r24")) == 25

    def test_fork_outside_history_is_refused(self, store: EventStore) -> None:
        store.create_run("p", encoded(3))
        for bad in (0, 4):
            with pytest.raises(InvalidFork, match="seq 1..3"):
                store.create_run("c", encoded(1), parent_run_id="p", fork_seq=bad)
        with pytest.raises(UnknownRun):
            store.get_run("c")

    # ---------------------------------------------------------------- integrity

    def test_verify_names_altered_event(self, store: EventStore) -> None:
        chain, prev = [], GENESIS_HASH
        for seq, event in enumerate(encoded(4), start=1):
            chain.append(seal(event, "b", seq, prev, "t"))
            prev = chain[-1].hash
        chain[2] = replace(chain[2], payload='{"reason":"forged"}')
        store.import_events([RunRecord("b", None, None, "t")], chain)
        with pytest.raises(IntegrityError, match="run b seq 3: hash mismatch"):
            store.verify("b")

    def test_verify_detects_gap(self, store: EventStore) -> None:
        store.create_run("a", encoded(4))
        events = [e for e in store.read("a") if e.seq != 2]
        run = RunRecord("g", None, None, "t")
        store.import_events([run], [replace(e, run_id="g") for e in events])
        with pytest.raises(IntegrityError, match="seq"):
            store.verify("g")

    def test_import_is_atomic(self, store: EventStore) -> None:
        store.create_run("a", encoded(2))
        events = list(store.read("a"))
        with pytest.raises(RunExists):
            store.import_events([RunRecord("n", None, None, "t"), RunRecord("a", None, None, "t")],
                                events)
        with pytest.raises(UnknownRun):
            store.get_run("n")

    # ---------------------------------------------------------------- keyed chain

    def test_rewrite_with_recomputed_chain_is_caught_at_its_seq(self, store: EventStore) -> None:
        store.create_run("a", encoded(3))
        store.create_run("b", encoded(6, "b"))
        self.outsider_rewrite(store, "b", 3, '{"reason":"forged"}')
        assert json.loads(present(store.event_at("b", 3)).payload) == {"reason": "forged"}
        with pytest.raises(IntegrityError, match="run b seq 3: rewritten") as info:
            store.verify("b")
        assert info.value.seq == 3
        assert store.verify("a") == 3

    def test_rewrite_of_the_last_event_is_caught(self, store: EventStore) -> None:
        store.create_run("b", encoded(4))
        self.outsider_rewrite(store, "b", 4, '{"reason":"forged"}')
        with pytest.raises(IntegrityError, match="run b seq 4: rewritten"):
            store.verify("b")

    def test_truncated_tail_is_caught(self, store: EventStore) -> None:
        store.create_run("b", encoded(6))
        self.outsider_truncate(store, "b", keep=4)
        with pytest.raises(IntegrityError, match="run b seq 5: truncated.*ends at seq 6"):
            store.verify("b")

    def test_event_forged_onto_the_end_is_caught(self, store: EventStore) -> None:
        store.create_run("b", encoded(3))
        last = present(store.last_event("b"))
        forged = seal(encoded(1, "forged")[0], "b", 4, last.hash, "t")
        self.outsider_append(store, forged)
        assert store.last_seq("b") == 4
        with pytest.raises(IntegrityError, match="run b seq 4: (no keyed MAC|rewritten)"):
            store.verify("b")

    def test_a_fork_verifies_its_inherited_prefix_by_key(self, store: EventStore) -> None:
        store.create_run("p", encoded(5))
        store.create_run("c", encoded(2, "c"), parent_run_id="p", fork_seq=4)
        assert store.verify("c") == 6
        self.outsider_rewrite(store, "p", 2, '{"reason":"forged"}')
        with pytest.raises(IntegrityError, match="run c seq 2: rewritten.*inherited from run p"):
            store.verify("c")

    def test_imported_rows_get_this_stores_macs(self, store: EventStore) -> None:
        sealed = seal_batch(encoded(5), "imp", 0, GENESIS_HASH, "t")
        store.import_events([RunRecord("imp", None, None, "t")], sealed)
        assert store.verify("imp") == 5
        store.append("imp", encoded(1, "more"), expected_last_seq=5)
        assert store.verify("imp") == 6

    def test_chain_key_is_never_shown(self, store: EventStore) -> None:
        store.create_run("a", encoded(2))
        secret = store.chain_key._secret
        assert secret.hex() not in repr(store.chain_key) and str(secret) not in repr(store.chain_key)
        assert all(secret.hex() not in e.payload for e in store.read("a"))

    # ---------------------------------------------------------------- redaction

    def test_secrets_are_redacted_from_events_cache_snapshots_and_text_blobs(
            self) -> None:
        store = self.open_store(Redactor({CANARY_ENV: CANARY}))
        escaped = 'quote"' + CANARY
        store.create_run("a", [EncodedEvent("RunPaused", 1, json.dumps(
            {"reason": f"env: {CANARY}", CANARY: [f"x{CANARY}y"], "q": escaped},
            separators=(",", ":"), sort_keys=True))])
        stored = store.append("a", [EncodedEvent("RunPaused", 1, f'{{"reason":"{CANARY}"}}')], 1)
        for event in (*store.read("a"), *stored):
            assert CANARY not in event.payload and MARK in event.payload
            json.loads(event.payload)
        assert store.verify("a") == 2
        store.cache_put(CacheEntry("k", "episode", "e1", "a", json.dumps({"out": CANARY}), "{}"))
        assert present(store.cache_get("k")).result == json.dumps({"out": MARK}, separators=(",", ":"))
        store.put_snapshot(Snapshot("a", 2, "v1", "h", json.dumps({"s": CANARY})))
        assert CANARY not in present(store.latest_snapshot("a", "v1")).body
        sha = store.blobs.put_text(f"stdout tail: {CANARY}\n")
        assert store.blobs.get_text(sha) == f"stdout tail: {MARK}\n"
        assert sha == hashlib.sha256(f"stdout tail: {MARK}\n".encode()).hexdigest()
        with pytest.raises(SecretRefused, match=f"\\${CANARY_ENV}") as info:
            store.blobs.put(b"weights" + CANARY.encode())
        assert CANARY not in str(info.value)

    def test_import_of_a_row_holding_a_secret_is_refused_whole(self) -> None:
        store = self.open_store(Redactor({CANARY_ENV: CANARY}))
        events = [EncodedEvent("RunPaused", 1, '{"reason":"fine"}'),
                  EncodedEvent("RunPaused", 1, f'{{"reason":"{CANARY}"}}')]
        sealed = seal_batch(events, "imp", 0, GENESIS_HASH, "t")
        with pytest.raises(SecretRefused, match="run imp seq 2"):
            store.import_events([RunRecord("imp", None, None, "t")], sealed)
        with pytest.raises(UnknownRun):
            store.get_run("imp")

    # ---------------------------------------------------------------- blobs

    def test_blobs_are_content_addressed(self, store: EventStore) -> None:
        sha = store.blobs.put(b"harness source")
        assert store.blobs.put(b"harness source") == sha
        assert store.blobs.get(sha) == b"harness source"
        assert store.blobs.has(sha)
        assert store.blobs.get_text(store.blobs.put_text("é")) == "é"
        with pytest.raises(BlobMissing):
            store.blobs.get("0" * 64)

    # ---------------------------------------------------------------- cache

    def test_cache_keeps_first_entry(self, store: EventStore) -> None:
        assert store.cache_get("k") is None
        store.cache_put(CacheEntry("k", "episode", "e1", "a", '{"x":1}', "{}"))
        store.cache_put(CacheEntry("k", "episode", "e2", "b", '{"x":2}', "{}"))
        hit = store.cache_get("k")
        assert hit is not None and hit.effect_id == "e1" and hit.result == '{"x":1}'

    # ---------------------------------------------------------------- snapshots

    def test_latest_snapshot_by_version_and_seq(self, store: EventStore) -> None:
        store.create_run("a", encoded(5))
        assert store.latest_snapshot("a", "v1") is None
        for seq in (2, 4):
            store.put_snapshot(Snapshot("a", seq, "v1", f"h{seq}", f"body{seq}"))
        store.put_snapshot(Snapshot("a", 5, "v2", "h5", "other"))
        assert present(store.latest_snapshot("a", "v1")).seq == 4
        assert present(store.latest_snapshot("a", "v1", upto=3)).body == "body2"
        assert store.latest_snapshot("a", "v1", upto=1) is None
        assert present(store.latest_snapshot("a", "v2")).seq == 5

    # ---------------------------------------------------------------- leases

    def test_lease_excludes_a_second_driver(self, store: EventStore) -> None:
        store.create_run("a", encoded(1))
        me = f"{os.uname().nodename}:{os.getpid()}:aaaa"
        other = f"{os.uname().nodename}:{os.getpid()}:bbbb"
        store.acquire_lease("a", me, ttl_s=60)
        store.acquire_lease("a", me, ttl_s=60)
        with pytest.raises(LeaseHeld, match="bbbb|aaaa") as info:
            store.acquire_lease("a", other, ttl_s=60)
        assert me in str(info.value)
        store.release_lease("a", me)
        store.acquire_lease("a", other, ttl_s=60)

    def test_expired_or_dead_lease_is_taken_over(self, store: EventStore) -> None:
        store.create_run("a", encoded(1))
        store.create_run("b", encoded(1))
        live = f"{os.uname().nodename}:{os.getpid()}:live"
        store.acquire_lease("a", live, ttl_s=60)
        self.clock.advance(60)
        store.acquire_lease("a", "elsewhere:1:new", ttl_s=60)
        dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        store.acquire_lease("b", f"{os.uname().nodename}:{dead_pid}:dead", ttl_s=600)
        store.acquire_lease("b", live, ttl_s=60)

    def test_lease_expiry_follows_the_injected_clock(self, store: EventStore) -> None:
        store.create_run("a", encoded(1))
        store.acquire_lease("a", "elsewhere:1:first", ttl_s=60)
        self.clock.advance(45)
        with pytest.raises(LeaseHeld, match="expires in 15s"):
            store.acquire_lease("a", "elsewhere:2:second", ttl_s=60)
        store.acquire_lease("a", "elsewhere:1:first", ttl_s=60)
        self.clock.advance(59)
        with pytest.raises(LeaseHeld, match="expires in 1s"):
            store.acquire_lease("a", "elsewhere:2:second", ttl_s=60)
        self.clock.advance(1)
        store.acquire_lease("a", "elsewhere:2:second", ttl_s=60)

    # ---------------------------------------------------------------- clock

    def test_stamps_come_from_the_injected_clock(self, store: EventStore) -> None:
        start = self.clock.now()
        store.create_run("a", encoded(2))
        self.clock.advance(90)
        store.append("a", encoded(1, "later"), expected_last_seq=2)
        assert store.get_run("a").created_at == start
        assert [e.recorded_at for e in store.read("a")] == [start, start, self.clock.now()]
        assert (datetime.fromisoformat(self.clock.now())
                - datetime.fromisoformat(start)).total_seconds() == 90
        assert store.verify("a") == 3
