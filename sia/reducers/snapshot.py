"""Snapshots of folded state: a cache that lets a long run load without refolding.

A snapshot is the canonical JSON of a LoopState at some seq, keyed by `REDUCER_VERSION`
(a hash of the code that defines what events mean), so a change to the reducers or the
event schemas silently retires old snapshots. It is plain JSON decoded into typed records,
never pickle, so a tampered store cannot run code; and it is only ever a shortcut —
`verify` and `replay --check` always fold from the first event.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel

from sia.events.canonical import canonical_json, sha256_hex
from sia.reducers.state import LoopState, to_jsonable

_SOURCES = ("reducers/state.py", "reducers/loop.py", "reducers/snapshot.py", "events/types.py")
REDUCER_VERSION = sha256_hex("".join(
    (Path(__file__).resolve().parent.parent / name).read_text(encoding="utf-8") for name in _SOURCES
))[:16]


def encode_state(state: LoopState) -> str:
    return canonical_json(to_jsonable(state))


def decode_state(text: str) -> LoopState:
    return typing.cast(LoopState, _build(LoopState, json.loads(text)))


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _build(kind: Any, value: Any) -> Any:
    """Rebuild a value of annotated type `kind` from its plain-JSON form."""
    origin = typing.get_origin(kind)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if origin is typing.Literal or kind is Any:
        return value
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        hints = _hints(kind)
        return kind(**{name: _build(hints[name], value[name]) for name in kind._fields})
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.model_validate(value)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_build(item, v) for v in value)
    if origin is frozenset:
        item = typing.get_args(kind)[0]
        return frozenset(_build(item, v) for v in value)
    if origin is dict:
        item = typing.get_args(kind)[1]
        return {k: _build(item, v) for k, v in value.items()}
    return value
