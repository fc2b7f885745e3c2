"""The SDK client a provider talks through: one per API key, read from the environment.

Keys are looked up at call time, never stored on a request or response. A rotated key
gets a fresh client (a fresh connection pool); the old one is left to calls still using
it. Shared by threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sia.llm.errors import MissingCredentials

Client = TypeVar("Client")


def api_key(env_var: str, provider: str) -> str:
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise MissingCredentials(env_var, provider)
    return key


class ClientPerKey(Generic[Client]):
    def __init__(self, make: Callable[[str], Client]) -> None:
        self._make = make
        self._client: Client | None = None
        self._key: str | None = None
        self._lock = threading.Lock()

    def get(self, key: str) -> Client:
        with self._lock:
            if self._client is None or self._key != key:
                self._client, self._key = self._make(key), key
            return self._client

    def close(self) -> None:
        with self._lock:
            close = getattr(self._client, "close", None)
            if callable(close):
                close()
            self._client, self._key = None, None
