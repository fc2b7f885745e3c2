"""Snapshots of folded state: a cache that lets a long run load without refolding.

A snapshot is the canonical JSON of a LoopState at some seq, keyed by `REDUCER_VERSION`:
a hash of what the fold means (`FOLD_VERSION`, bumped by hand) and of LoopState's shape
(every field's name and type, recursively), so a change of either silently retires old
snapshots, while an edit of a comment or docstring keeps them. It is plain JSON decoded
into typed records, never pickle, so a tampered store cannot run code; and it is only
ever a shortcut — `verify` and `replay --check` always fold from the first event.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

from sia.core.events.canonical import canonical_json, sha256_hex
from sia.core.reducers.state import LoopState, to_jsonable

FOLD_VERSION = 1
"""Bump when the same events would fold to a different state (a reducer's meaning changed);
a change of LoopState's shape retires snapshots by itself, bumped or not."""


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def schema_of(kind: Any) -> Any:
    """The shape of an annotated type as plain JSON: records and models by their fields'
    names and types, generics by origin and arguments; never docstrings or defaults."""
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        hints = _hints(kind)
        return {kind.__name__: {name: schema_of(hints[name]) for name in kind._fields}}
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {kind.__name__: {name: schema_of(field.annotation)
                                for name, field in kind.model_fields.items()}}
    arguments = typing.get_args(kind)
    if arguments:
        return [repr(typing.get_origin(kind)), [schema_of(a) for a in arguments]]
    return repr(kind)


def reducer_version(state_type: type = LoopState, fold_version: int = FOLD_VERSION) -> str:
    """The key snapshots are stored under: a function of these two values alone, never of
    source text."""
    return sha256_hex(canonical_json({"fold": fold_version, "state": schema_of(state_type)}))[:16]


REDUCER_VERSION = reducer_version()


def encode_state(state: LoopState) -> str:
    return canonical_json(to_jsonable(state))


def decode_state(text: str) -> LoopState:
    return typing.cast(LoopState, _build(LoopState, json.loads(text)))


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
