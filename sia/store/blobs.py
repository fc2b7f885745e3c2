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
from abc import ABC, abstractmethod
from pathlib import Path

from sia.store.files import atomic_write, fsync_dir
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


def verified(sha: str, data: bytes) -> bytes:
    """`data`, read under the name `sha`, if it still hashes to it; BlobCorrupt otherwise."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise BlobCorrupt(sha)
    return data


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
        return verified(sha, data)

    def has(self, sha: str) -> bool:
        return sha in self._blobs


class FileBlobStore(BlobStore):
    """Blobs as files `root/ab/cdef…` (0600, in 0700 folders), durable when a put returns: each
    is written to a temp name, fsynced and renamed, and its folder fsynced (the root too, the
    first time this store writes in a folder). A name never points at data a power loss could
    take, so a put that finds the name taken can skip the write."""

    def __init__(self, root: Path, redactor: Redactor | None = None) -> None:
        super().__init__(redactor)
        self.root = Path(root)
        self._rooted: set[str] = set()
        """Folders whose entry in the root this store has fsynced."""
        make_private_dir(self.root)

    def path(self, sha: str) -> Path:
        if not isinstance(sha, str) or SHA256_HEX.fullmatch(sha) is None:
            raise BlobMissing(sha)
        return self.root / sha[:2] / sha[2:]

    def _write(self, sha: str, data: bytes) -> None:
        target = self.path(sha)
        if target.exists():
            return
        make_private_dir(target.parent)
        atomic_write(target, data)
        if target.parent.name not in self._rooted:  # the folder may be new: a crash could lose its entry
            fsync_dir(self.root)
            self._rooted.add(target.parent.name)

    def get(self, sha: str) -> bytes:
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(sha) from None
        return verified(sha, data)

    def has(self, sha: str) -> bool:
        try:
            return self.path(sha).is_file()
        except BlobMissing:
            return False
