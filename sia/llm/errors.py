"""The three ways an LLM call fails, and the one policy that sorts HTTP failures into them.

The runtime retries, with backoff, only what is worth retrying, and records every
attempt as an event; so the SDKs' own retries are off and each provider must say which
kind of failure it saw. `TransientLLMError` is a `TransientEffectError` and
`PermanentLLMError` an `EffectError`, so the runtime needs to know nothing about LLMs.
Messages carry the provider's status and error text, never a credential.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from sia.effects.base import EffectError, TransientEffectError

NO_STATUS = 0
"""`status` of a failure that never got an HTTP response (refused, reset, timed out)."""

_RETRYABLE_4XX = frozenset({408, 409, 429})


class TransientLLMError(TransientEffectError):
    """Worth retrying: rate limited, overloaded, a 5xx, or the connection failed.

    `retry_after` is the server's requested wait in seconds (None when it gave none);
    `status` the HTTP status, or `NO_STATUS` when no response arrived.
    """

    def __init__(self, message: str, retry_after: float | None = None,
                 status: int = NO_STATUS) -> None:
        super().__init__(message, retry_after)
        self.status = status


class PermanentLLMError(EffectError):
    """Retrying the same request cannot help: bad request, bad key, unknown model, bad output."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MissingCredentials(PermanentLLMError):
    """The environment variable that should hold the API key is unset or empty."""

    def __init__(self, env_var: str, provider: str) -> None:
        super().__init__(f"{provider}: no API key: set the environment variable {env_var}")
        self.env_var = env_var


def is_retryable_status(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """The SDKs' own retry policy: an explicit `x-should-retry` wins, then 408/409/429/5xx."""
    verdict = (headers or {}).get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return status in _RETRYABLE_4XX or status >= 500


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `retry-after` as seconds or a date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))


def error_detail(body: Any) -> tuple[str | None, str | None]:
    """`(type, message)` from an error body shaped `{"error": {...}}` or `{...}` (SDKs differ)."""
    if not isinstance(body, Mapping):
        return None, (body if isinstance(body, str) and body else None)
    inner = body.get("error", body)
    if not isinstance(inner, Mapping):
        return None, str(inner) if inner else None
    kind = inner.get("type") or inner.get("code")
    message = inner.get("message")
    return (str(kind) if kind else None), (str(message) if message else None)


def from_http_status(provider: str, status: int, headers: Mapping[str, str] | None,
                     body: Any, fallback: str = "") -> TransientLLMError | PermanentLLMError:
    """The error for one failed HTTP response, classified and worded the same for every provider."""
    kind, message = error_detail(body)
    text = f"{provider}: HTTP {status}"
    if kind:
        text += f" {kind}"
    text += f": {message or fallback or 'no error message'}"
    if is_retryable_status(status, headers):
        return TransientLLMError(text, retry_after=retry_after_seconds(headers), status=status)
    return PermanentLLMError(text, status=status)
