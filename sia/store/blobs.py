"""Content-addressed storage for large payloads: harness code, trajectories, adapters.

A blob's name is the sha256 of its bytes, so writing is idempotent, two runs that produce
the same trajectory share it, and a read can prove it got what was written.

Every write goes through the store's Redactor (sia/store/redact.py). Text is redacted
before it is hashed, so the returned name is that of what was stored: callers must use
it, never a hash of their own. Bytes are stored verbatim, because their callers name them
by a hash of their own (an adapter's file index), and are refused if they hold a secret.
Adapter weights are scanned too although a key cannot usefully be in them (gradient
descent does not write a 40-byte ASCII string into float tensors, and adapter_config.json
is rebuilt from a fixed schema): the scan costs ~2 ms per 10 MB of weights per secret
(measured on float32 tensors) and turns "cannot happen" into "is checked".
"""

from __future__ import annotations

import hashlib
import re
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sia.store.files import atomic_write, fsync_dir, publish, write_temp
from sia.store.home import make_private_dir
from sia.store.redact import Redactor, redactor_from_environment

SHA256_HEX = re.compile("[0-9a-f]{64}")


class BlobMissing(KeyError):
    def __init__(self, sha: str) -> None:
        super().__init__(f"blob {sha} is not in the store")
        self.sha = sha


class BlobCorrupt(ValueError):
    def __init__(self, sha: str) -> None:
        super().__init__(f"blob {sha} does not match its hash (altered on disk)")
        self.sha = sha


class BlobStore(ABC):
    def __init__(self, redactor: Redactor | None = None) -> None:
        """`redactor` None: redact the secrets of the process's environment."""
        self.redactor = redactor_from_environment() if redactor is None else redactor

    def put(self, data: bytes) -> str:
        """Store bytes verbatim, return their sha256 hex; SecretRefused if they hold a secret."""
        self.redactor.refuse("a blob", data)
        sha = hashlib.sha256(data).hexdigest()
        self._write(sha, bytes(data))
        return sha

    def put_text(self, text: str) -> str:
        """Store text with every secret redacted; returns the sha256 of what was stored."""
        data = self.redactor.redact_document(text).encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        self._write(sha, data)
        return sha

    @abstractmethod
    def _write(self, sha: str, data: bytes) -> None:
        """Keep `data` under `sha` (already its hash); a no-op if it is there."""

    @abstractmethod
    def get(self, sha: str) -> bytes:
        """The bytes named `sha`; BlobMissing / BlobCorrupt otherwise."""

    @abstractmethod
    def has(self, sha: str) -> bool: ...

    def get_text(self, sha: str) -> str:
        return self.get(sha).decode("utf-8")

    def sync(self) -> None:
        """Make every blob put so far durable (a no-op where puts already are, or nothing is)."""

    def close(self) -> None:
        """Finish the writes under way (a no-op where a put is done when it returns)."""


class MemoryBlobStore(BlobStore):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__(redactor)
        self._blobs: dict[str, bytes] = {}

    def _write(self, sha: str, data: bytes) -> None:
        self._blobs.setdefault(sha, data)

    def get(self, sha: str) -> bytes:
        try:
            data = self._blobs[sha]
        except KeyError:
            raise BlobMissing(sha) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobCorrupt(sha)
        return data

    def has(self, sha: str) -> bool:
        return sha in self._blobs


class FileBlobStore(BlobStore):
    """Blobs as files `root/ab/cdef…` (0600, in 0700 folders), written to a temp name and renamed
    once durable: a name never points at data a power loss could take, so a put that finds the
    name taken can skip the write.

    A put is durable when it returns, unless `deferred`: then the put writes the temp file and
    hands the rest (its fsync, the rename, the folder's fsync and, for a new folder, the
    root's) to a few threads, and `sync`, which an event store calls before each write
    transaction, waits for every blob put so far, so that nothing it records refers to a blob
    that is not durable. A pending blob is read from its temp file.

    Deferred, an episode's worker does not wait on its trajectory's fsyncs (6-7 ms under 32
    concurrent episodes), and the transactions' thread does not fsync one blob after another:
    when the disk is slow (5 ms an fsync) that thread fell seconds behind the episodes."""

    PUBLISHERS = 4

    def __init__(self, root: Path, redactor: Redactor | None = None, *, deferred: bool = False) -> None:
        super().__init__(redactor)
        self.root = Path(root)
        self.deferred = deferred
        self._pending: dict[Path, tuple[Path, Future[None]]] = {}
        """Blob path -> its temp file and its publication, until a sync sees it done."""
        self._publishers: ThreadPoolExecutor | None = None
        self._rooted: set[str] = set()
        """Folders whose entry in the root this store has fsynced."""
        self._lock = threading.Lock()
        make_private_dir(self.root)

    def path(self, sha: str) -> Path:
        if not isinstance(sha, str) or SHA256_HEX.fullmatch(sha) is None:
            raise BlobMissing(sha)
        return self.root / sha[:2] / sha[2:]

    def _write(self, sha: str, data: bytes) -> None:
        target = self.path(sha)
        if target in self._pending or target.exists():
            return
        make_private_dir(target.parent)
        if not self.deferred:
            atomic_write(target, data)
            self._root_entry(target.parent)
            return
        tmp = write_temp(target, data)
        with self._lock:
            if target in self._pending:  # the same blob, put at the same time
                tmp.unlink()
                return
            if self._publishers is None:
                self._publishers = ThreadPoolExecutor(self.PUBLISHERS, thread_name_prefix="sia-blob")
            self._pending[target] = (tmp, self._publishers.submit(self._publish, tmp, target))

    def _publish(self, tmp: Path, target: Path) -> None:
        publish(tmp, target)
        self._root_entry(target.parent)

    def _root_entry(self, folder: Path) -> None:
        """fsync the root the first time this store writes in `folder`, which may be new (a
        crash could otherwise lose its entry)."""
        if folder.name not in self._rooted:
            fsync_dir(self.root)
            self._rooted.add(folder.name)

    def sync(self) -> None:
        """Wait until every blob put so far is durable. One whose publication failed (EIO, a
        full disk) is tried again here, and stays pending, for the next sync, if it fails again."""
        with self._lock:
            pending = list(self._pending.items())
        for target, (tmp, publication) in pending:
            try:
                publication.result()
            except Exception:  # noqa: BLE001 - whatever failed it, it is tried again here
                self._publish(tmp, target)
            with self._lock:
                self._pending.pop(target, None)

    def close(self) -> None:
        """Finish the publications under way and stop their threads (a later put starts them again)."""
        with self._lock:
            publishers, self._publishers = self._publishers, None
        if publishers is not None:
            publishers.shutdown(wait=True)

    def get(self, sha: str) -> bytes:
        target = self.path(sha)
        pending = self._pending.get(target)
        candidates = (pending[0], target) if pending else (target,)  # the temp file first: it is
        for candidate in candidates:                                # renamed to the target, never lost
            try:
                data = candidate.read_bytes()
                break
            except FileNotFoundError:
                continue
        else:
            raise BlobMissing(sha)
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobCorrupt(sha)
        return data

    def has(self, sha: str) -> bool:
        try:
            target = self.path(sha)
        except BlobMissing:
            return False
        return target in self._pending or target.is_file()
