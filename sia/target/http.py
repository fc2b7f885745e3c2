"""A keep-alive JSON-over-HTTP client for the target server, on the standard library.

Every episode's model call passes through here, and the `openai` SDK took about 1 ms of CPU
per call (request transforms, pydantic models, httpx) against 0.13 ms for a plain keep-alive
request: at 32 concurrent episodes on 2 cores that was a tenth of each episode's CPU, and all
of it under the interpreter lock. This does only what the target needs: POST a JSON body,
read a JSON answer, keep connections alive (one per thread at a time, pooled), and retry as
the SDK did — connection failures and 408, 409, 429 and 5xx answers, twice, after 0.5 s and
1 s or the server's Retry-After (capped at 8 s); a reused connection the server had closed
is retried at once on a fresh one.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

RETRIED_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER_S = 8.0


class Unreachable(RuntimeError):
    """No answer from the server after the retries (refused, reset, timed out)."""


class JsonClient:
    """POST JSON to `root` (e.g. `http://host:8000`), keeping connections alive."""

    def __init__(self, root: str, *, api_key: str | None, timeout: float, max_retries: int = 2,
                 backoff_s: float = 0.5) -> None:
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {root!r}")
        self.root, self.timeout, self.max_retries, self.backoff_s = root, timeout, max_retries, backoff_s
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """The status and decoded JSON body (the text when it is not JSON) of POST `path`."""
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                status, headers, raw = self._exchange(path, data)
            except (OSError, http.client.HTTPException) as exc:
                if attempt == self.max_retries:
                    raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            if status in RETRIED_STATUSES and attempt < self.max_retries:
                time.sleep(_retry_after(headers, self.backoff_s * 2 ** attempt))
                continue
            try:
                return status, json.loads(raw)
            except ValueError:
                return status, raw.decode("utf-8", "replace")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _exchange(self, path: str, data: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on an idle connection (again on a fresh one if the server had closed
        that one while it idled), or on a new connection."""
        with self._lock:
            reused = self._idle.pop() if self._idle else None
        if reused is not None:
            try:
                return self._on(reused, path, data)
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                pass
        return self._on(self._connect(), path, data)

    def _on(self, connection: http.client.HTTPConnection, path: str,
            data: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        try:
            connection.request("POST", self._prefix + path, data, self._headers)
            response = connection.getresponse()
            raw = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append(connection)
        return response.status, response.headers, raw

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self.timeout)


def _retry_after(headers: http.client.HTTPMessage, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(headers.get("retry-after", ""))))
    except ValueError:
        return default


def error_message(body: Any) -> str:
    """The message of an OpenAI-style error body (`{"error": {"message": ...}}` or vLLM's
    `{"message": ...}` / `{"detail": ...}`), else the body itself, shortened."""
    if isinstance(body, dict):
        error = body.get("error")
        inner = error if isinstance(error, dict) else body
        for key in ("message", "detail"):
            if inner.get(key):
                return str(inner[key])
    return str(body)[:500]
