"""The per-home chain key: what makes a rewritten log detectable even when its sha256 chain is not.

The plain sha256 chain proves a log is self-consistent, and anyone can recompute it: an
attacker who rewrites an event and re-hashes every later one leaves a chain that checks
out. So each stored event also carries a MAC of its hash, and each run a keyed *head*
(the seq and hash its history ends at), under a secret key that only this home holds.
Without the key, a rewrite, an insertion or a truncation cannot produce matching MACs.

The MAC is keyed BLAKE2b-256 rather than HMAC-SHA256: BLAKE2's keyed mode is a MAC by
design (no length extension, so no nested construction is needed), and it costs one pass
instead of HMAC's two: 0.7 µs against 1.8 µs per row of CPU here, on every append.

What it protects against: anything that can write the database but cannot read the key —
a harness or a tool given the database and not the home, a copied or restored file. What it
cannot protect against: a process running as the owner with the whole home in reach, which
can read the key and re-MAC everything; keeping children away from the home is the OS
sandbox's job. Nor a rollback: an attacker who saved the database earlier can put that
older, genuinely keyed state back (whole runs truncated to what they were then, heads
included); only an anchor outside the attacker's reach that never goes backwards would
catch that. The key is never exported, printed or recorded; it must never leave `keys/`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

KEY_BYTES = 32
MAC_BYTES = 32


class ChainKeyError(Exception):
    """The key of a store whose rows carry MACs is missing or damaged: nothing can vouch for them."""


class ChainKey:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a chain key is {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = secret

    @classmethod
    def generate(cls) -> ChainKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def __repr__(self) -> str:
        return "ChainKey(<secret>)"

    def event_mac(self, event_hash: str) -> str:
        """The hash covers every field and the previous hash, so MACing it covers the row."""
        return hashlib.blake2b(b"event\n" + event_hash.encode("ascii"), key=self._secret,
                               digest_size=MAC_BYTES).hexdigest()

    def head_mac(self, run_id: str, seq: int, last_hash: str) -> str:
        """Binds where a run's history ends, against truncation. Its lineage needs no MAC:
        the first own event's prev_hash already pins the parent's event it branched from."""
        text = f"head\n{run_id}\n{seq}\n{last_hash}"
        return hashlib.blake2b(text.encode("utf-8"), key=self._secret,
                               digest_size=MAC_BYTES).hexdigest()


def load_chain_key(path: Path, create: bool) -> ChainKey:
    """Read the key at `path`; with `create`, make it (mode 0600, in a 0700 folder) if absent.

    Two processes opening a new home at once agree on one key: each writes a complete
    temp file and links it into place, which fails for all but the first.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        if not create:
            raise ChainKeyError(
                f"{path} is missing: the log's keyed MACs cannot be checked. If you moved "
                "sia.sqlite without its keys/ folder, move that folder too (to move runs "
                "between homes, use `sia export` and `sia import`)"
            ) from None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> ChainKey:
    secret = path.read_bytes()
    if len(secret) != KEY_BYTES:
        raise ChainKeyError(f"{path} is damaged ({len(secret)} bytes, not {KEY_BYTES}): the "
                            "log's keyed MACs cannot be checked")
    return ChainKey(secret)
