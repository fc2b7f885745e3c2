"""Who trains a job when several calls for it run at once: one winner, by an atomic put.

A Modal Volume has no locking and its last writer wins, so two concurrent calls for one
job would both train and both write `adapter/`, `manifest.json` and `DONE`. Instead each
call claims the job in a store with an atomic put-if-absent (`modal.Dict.put(...,
skip_if_exists=True)`, one server-side `DictUpdate` with `if_not_exists`; locally a file
created with `os.link`, which fails if the name exists). The winner trains; every other
call waits for the winner's DONE and returns that manifest without writing anything.

A winner proves it is alive by a heartbeat it writes every `beat_s` seconds from a
thread. A claim whose newest beat (or whose claim time, before the first beat) is older
than `stale_s` belongs to a dead call: the next claimant takes the job over by claiming
the next *generation* key, again put-if-absent, so exactly one claimant takes it over.
A Modal retry of the winning call carries the same owner id (its FunctionCall id) and
resumes its own claim. A winner that fails with an exception releases its claim at once,
so the next claimant need not wait `stale_s`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class ClaimStore(Protocol):
    """A small key-value store whose `put_if_absent` is atomic across processes/containers."""

    def put_if_absent(self, key: str, value: str) -> bool: ...
    def get(self, key: str) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...


class FileClaimStore:
    """Claims as files under `root`: a local volume root, or tests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key.replace("/", "~")

    def _staged(self, value: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{uuid.uuid4().hex}"
        staging.write_text(value, encoding="utf-8")
        return staging

    def put_if_absent(self, key: str, value: str) -> bool:
        staging = self._staged(value)
        try:
            os.link(staging, self._path(key))  # atomic: fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            staging.unlink()

    def get(self, key: str) -> str | None:
        try:
            return self._path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def put(self, key: str, value: str) -> None:
        os.replace(self._staged(value), self._path(key))


class ModalDictClaimStore:
    """Claims in a named `modal.Dict` (shared by every container of the app)."""

    def __init__(self, mapping: Any) -> None:
        self.mapping = mapping

    def put_if_absent(self, key: str, value: str) -> bool:
        return bool(self.mapping.put(key, value, skip_if_exists=True))

    def get(self, key: str) -> str | None:
        return self.mapping.get(key, None)

    def put(self, key: str, value: str) -> None:
        self.mapping.put(key, value)


@dataclass(frozen=True)
class Claim:
    won: bool
    generation: int
    holder: str

    def key(self, job_id: str) -> str:
        return _key(job_id, self.generation)


def _key(job_id: str, generation: int) -> str:
    return f"{job_id}/{generation}"


def _parse(value: str) -> tuple[str, float]:
    owner, _, at = value.rpartition(" ")
    return owner, float(at)


def claim_job(store: ClaimStore, job_id: str, owner: str, *, now: float, stale_s: float) -> Claim:
    """Claim `job_id` for `owner`, or name the live call that holds it."""
    generation = 0
    while True:
        key = _key(job_id, generation)
        if store.put_if_absent(key, f"{owner} {now}"):
            return Claim(True, generation, owner)
        value = store.get(key)
        if value is None:  # expired in between (modal.Dict entries expire after 7 idle days): put again
            continue
        if store.get(_key(job_id, generation + 1)) is not None or store.get(f"{key}/released") is not None:
            generation += 1  # this generation is over: taken over, or given up
            continue
        holder, claimed_at = _parse(value)
        if holder == owner:
            return Claim(True, generation, owner)
        beat = store.get(f"{key}/beat")
        last = max(claimed_at, float(beat) if beat is not None else claimed_at)
        if now - last > stale_s:
            generation += 1  # the holder is dead: contend for the next generation
            continue
        return Claim(False, generation, holder)


def release(store: ClaimStore, job_id: str, claim: Claim) -> None:
    """Give up a won claim (the job failed here): the next claimant takes the next generation."""
    store.put(f"{claim.key(job_id)}/released", "1")


class Heartbeat:
    """Writes `now()` to the claim's beat key every `beat_s` seconds while running."""

    def __init__(self, store: ClaimStore, key: str, beat_s: float,
                 now: Callable[[], float] = time.time) -> None:
        self.store, self.key, self.beat_s, self.now = store, f"{key}/beat", beat_s, now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sia-claim-heartbeat", daemon=True)

    def _run(self) -> None:
        while True:
            self.store.put(self.key, repr(self.now()))
            if self._stop.wait(self.beat_s):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
