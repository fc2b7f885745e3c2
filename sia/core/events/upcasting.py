"""Upcasters bring an event stored under an old schema version up to the current one.

An upcaster is a pure function on the decoded payload dict for one (type, version) step;
a v1 payload of a type now at v3 passes through the v1→v2 and v2→v3 steps in order.
Stored rows are never rewritten: upcasting happens on every read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


class UnknownSchemaVersion(ValueError):
    """A stored event has a schema version no upcaster chain leads from."""


class Upcasters:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: `fn` turns a `from_version` payload into a `from_version + 1` one."""

        def add(fn: Upcaster) -> Upcaster:
            self._steps[(event_type, from_version)] = fn
            return fn

        return add

    def upcast(self, event_type: str, version: int, target: int, payload: Payload) -> Payload:
        if version > target:
            raise UnknownSchemaVersion(
                f"{event_type} v{version} is newer than this sia knows (v{target}); upgrade sia"
            )
        while version < target:
            step = self._steps.get((event_type, version))
            if step is None:
                raise UnknownSchemaVersion(
                    f"no upcaster for {event_type} v{version} -> v{version + 1}"
                )
            payload = step(payload)
            version += 1
        return payload


UPCASTERS = Upcasters()
"""The registry the default mapper uses; sia's own schema changes register here."""
