"""Canonical JSON and sha256: the byte form every hash in sia is computed over.

Hashes must agree across machines and Python versions, so the encoding is pinned:
sorted keys, compact separators, UTF-8 (no ASCII escaping), and only finite floats.
Python writes floats as their shortest round-tripping repr, so a float decodes to the
same value it was encoded from; NaN and infinities have no JSON form and are refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS_HASH = "0" * 64
"""The `prev_hash` of the first event of a root run."""


class CanonicalJSONError(ValueError):
    """A value has no canonical JSON form (NaN, infinity, an arbitrary object)."""


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def canonical_json(value: Any) -> str:
    """Encode `value` as canonical JSON text."""
    try:
        return _ENCODER.encode(value)
    except (ValueError, TypeError) as exc:
        raise CanonicalJSONError(f"value has no canonical JSON form: {exc}") from exc


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def content_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value`: the identity of a request, spec or state."""
    return sha256_hex(canonical_bytes(value))
