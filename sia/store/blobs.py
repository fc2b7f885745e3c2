"""Content-addressed storage for large payloads: harness code, trajectories, adapters.

A blob's name is the sha256 of its bytes, so writing is idempotent, two runs that produce
the same trajectory share it, and a read can prove it got what was written.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

from sia.store.files import atomic_write


class BlobMissing(KeyError):
    def __init__(self, sha: str) -> None:
        super().__init__(f"blob {sha} is not in the store")
        self.sha = sha


class BlobCorrupt(ValueError):
    def __init__(self, sha: str) -> None:
        super().__init__(f"blob {sha} does not match its hash (altered on disk)")
        self.sha = sha


class BlobStore(ABC):
    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store bytes, return their sha256 hex."""

    @abstractmethod
    def get(self, sha: str) -> bytes:
        """The bytes named `sha`; BlobMissing / BlobCorrupt otherwise."""

    @abstractmethod
    def has(self, sha: str) -> bool: ...

    def put_text(self, text: str) -> str:
        return self.put(text.encode("utf-8"))

    def get_text(self, sha: str) -> str:
        return self.get(sha).decode("utf-8")


class MemoryBlobStore(BlobStore):
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._blobs.setdefault(sha, bytes(data))
        return sha

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
    """Blobs as files `root/ab/cdef…`, written to a temp name and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BlobMissing(sha)
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha
        atomic_write(target, data)
        return sha

    def get(self, sha: str) -> bytes:
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(sha) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise BlobCorrupt(sha)
        return data

    def has(self, sha: str) -> bool:
        try:
            return self.path(sha).is_file()
        except BlobMissing:
            return False
