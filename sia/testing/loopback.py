"""The HTTP machinery the protocol stand-ins share: serving, fault scripts, request log.

A subclass names its routes and turns a request into `(status, headers, json body)`;
this module does the socket work. Faults are queued and served, one per request, before
the next request is handed to the route, which is how a test scripts "429 then 500 then
success". Every request is recorded first, so a test can inspect what the SDK sent even
when it was answered with a fault. A `Conversation` scripts a tool-using exchange turn by
turn (`CallTools`, then `FinalAnswer`) and refuses a request that does not carry the
results of the calls it made.
"""

from __future__ import annotations

import json
import socket
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

JSON = dict[str, Any]
Route = Callable[["RecordedRequest"], tuple[int, dict[str, str], JSON]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: `headers` keys are lower-case; `body` is None unless JSON."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any

    @property
    def text(self) -> str:
        return self.raw_body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Fault:
    """A scripted failure: an HTTP error in the protocol's error shape, or a dropped connection.

    `retry_after` becomes a `retry-after` header (seconds); `error_type` defaults to the
    protocol's type for `status`.
    """

    status: int = 500
    message: str = "scripted fault"
    error_type: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    disconnect: bool = False

    @classmethod
    def rate_limited(cls, retry_after: float | None = 0) -> Fault:
        return cls(429, "rate limit exceeded (scripted)", retry_after=retry_after)

    @classmethod
    def server_error(cls) -> Fault:
        return cls(500, "internal server error (scripted)")

    @classmethod
    def overloaded(cls) -> Fault:
        return cls(529, "overloaded (scripted)")

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls(401, "invalid x-api-key (scripted)")

    @classmethod
    def dropped(cls) -> Fault:
        """Close the connection without answering: the SDK sees a connection error."""
        return cls(0, "connection dropped (scripted)", disconnect=True)


@dataclass(frozen=True)
class IssuedCall:
    """A tool call as the server sends it: `arguments` is an object, or raw text, to script a
    malformed call: OpenAI's `arguments` string as it is; Anthropic's `input` as the JSON
    value the text encodes (a list, a number), or as a string when it encodes none."""

    id: str
    name: str
    arguments: Mapping[str, Any] | str


@dataclass(frozen=True)
class Reply:
    """A scripted answer with full control. `tool_input` answers with a tool call
    (Anthropic) or a JSON content (OpenAI); `tool_calls` with real tool calls on either
    protocol; `usage` overrides the server's token estimate."""

    text: str = ""
    tool_input: Mapping[str, Any] | None = None
    tool_name: str | None = None
    stop_reason: str | None = None
    usage: Mapping[str, int] | None = None
    tool_calls: tuple[IssuedCall, ...] = ()


@dataclass(frozen=True)
class ScriptedCall:
    """A call a scripted turn makes; the conversation gives it an id. A `str` `arguments` is
    raw arguments text (not JSON, or JSON that is not an object), to script a malformed call
    (see `IssuedCall`)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)


@dataclass(frozen=True)
class CallTools:
    """A scripted turn that calls tools (with optional text before the calls)."""

    calls: tuple[ScriptedCall, ...]
    text: str = ""
    usage: Mapping[str, int] | None = None


@dataclass(frozen=True)
class FinalAnswer:
    """A scripted turn that answers in text and calls nothing."""

    text: str
    usage: Mapping[str, int] | None = None
    stop_reason: str | None = None


@dataclass(frozen=True)
class SeenResult:
    """A tool result as a request carried it. OpenAI has no error flag: `is_error` is False there."""

    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class ToolExchange:
    """The tool calls (assistant turns) and tool results a request's conversation carries, in order."""

    calls: tuple[IssuedCall, ...]
    results: tuple[SeenResult, ...]
    offered: frozenset[str] = frozenset()
    """The names of the tools the request defines."""

    def result_for(self, call_id: str) -> SeenResult | None:
        return next((result for result in self.results if result.call_id == call_id), None)


class ConversationMismatch(Exception):
    """A request that does not continue the scripted conversation as the script played it."""


class Conversation:
    """A responder that plays a scripted tool conversation, one turn per request.

    Before answering turn k it checks that the request carries every call turns 0..k-1
    made, as made (ids, names, object arguments), each with a tool result: proof the
    client echoed the assistant turns and sent the results. A request that does not is
    refused (the server records a responder error and answers 500 with `x-should-retry:
    false`) and does not advance the script; so does a request after the last turn. A turn
    scripted to be malformed (raw-text arguments, or a tool the request does not define) is
    one a client must reject whole, so its calls are not expected back.
    `requests` and `exchanges` hold what each answered request carried, in order.
    """

    def __init__(self, turns: tuple[CallTools | FinalAnswer, ...],
                 exchange_of: Callable[[JSON], ToolExchange], id_prefix: str) -> None:
        self.turns = turns
        self._exchange_of = exchange_of
        self._id_prefix = id_prefix
        self._lock = threading.Lock()
        self.requests: list[JSON] = []
        self.exchanges: list[ToolExchange] = []
        self.issued: list[IssuedCall] = []
        """Every call the script has made so far, with the ids it gave them."""

    def __call__(self, request: JSON) -> Reply:
        with self._lock:
            number = len(self.requests)
            if number >= len(self.turns):
                raise ConversationMismatch(f"conversation script exhausted after {number} turns")
            exchange = self._exchange_of(request)
            self._check(number, exchange)
            self.requests.append(request)
            self.exchanges.append(exchange)
            turn = self.turns[number]
            if isinstance(turn, FinalAnswer):
                return Reply(text=turn.text, usage=turn.usage, stop_reason=turn.stop_reason)
            calls = tuple(IssuedCall(f"{self._id_prefix}{number:02d}_{i:02d}", call.name, call.arguments)
                          for i, call in enumerate(turn.calls))
            if not any(isinstance(c.arguments, str) or c.name not in exchange.offered for c in calls):
                self.issued += calls
            return Reply(text=turn.text, usage=turn.usage, tool_calls=calls)

    @property
    def finished(self) -> bool:
        with self._lock:
            return len(self.requests) == len(self.turns)

    def _check(self, number: int, exchange: ToolExchange) -> None:
        echoed = [(call.id, call.name) for call in exchange.calls]
        expected = [(call.id, call.name) for call in self.issued]
        if echoed != expected:
            raise ConversationMismatch(f"turn {number}: the request carries tool calls {echoed}, "
                                       f"but the script made {expected}")
        for sent, made in zip(exchange.calls, self.issued):
            if not isinstance(made.arguments, str) and dict(made.arguments) != sent.arguments:
                raise ConversationMismatch(f"turn {number}: call {made.id} came back with arguments "
                                           f"{sent.arguments!r}, but was made with {dict(made.arguments)!r}")
        missing = [call.id for call in self.issued if exchange.result_for(call.id) is None]
        if missing:
            raise ConversationMismatch(f"turn {number}: no tool result for calls {missing}")


class Script:
    """A responder that gives its answers in order, one per request, from any thread.

    `Script("plan", {"action": "stop", "rationale": "done"})`; running out is a responder
    error (the server answers 500 with `x-should-retry: false` and records it in `errors`).
    `seen` holds the request bodies it answered, in order.
    """

    def __init__(self, *answers: Any) -> None:
        self._answers: deque[Any] = deque(answers)
        self._lock = threading.Lock()
        self.seen: list[JSON] = []

    def __call__(self, request: JSON) -> Any:
        with self._lock:
            if not self._answers:
                raise LookupError(f"script exhausted after {len(self.seen)} answers")
            self.seen.append(request)
            return self._answers.popleft()

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._answers)


def estimate_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return (len(text) + 3) // 4


class ProtocolError(Exception):
    """A request the stand-in refuses; becomes an error response in the protocol's shape.

    `param` and `code`, when given, replace those fields of an `{"error": {...}}` body
    (OpenAI and vLLM name the refused parameter and a machine-readable code there).
    """

    def __init__(self, status: int, message: str, error_type: str | None = None, *,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code


class LoopbackServer(ABC):
    """Base of the stand-ins: a ThreadingHTTPServer on 127.0.0.1:0, used as a context manager."""

    def __init__(self) -> None:
        self.responder: Callable[[JSON], Any]
        """Called from the server's handler threads, possibly concurrently."""
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        """Responder exceptions and other server-side problems, for tests to assert empty."""
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- what each protocol defines

    @abstractmethod
    def routes(self) -> dict[tuple[str, str], Route]: ...

    @abstractmethod
    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]: ...

    # -- scripting

    def fail_next(self, *faults: Fault) -> None:
        """Queue faults; each of the next requests gets one, in order, before any success."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.errors.clear()
            self._faults.clear()

    # -- lifecycle

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server is not running (use it as a context manager)")
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> LoopbackServer:
        handler = _handler_for(self)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, so no handler thread outlives the server."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- request handling (called from handler threads)

    def _handle(self, recorded: RecordedRequest) -> tuple[int, dict[str, str], JSON] | None:
        """The response to send, or None to drop the connection."""
        with self._lock:
            self.requests.append(recorded)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.disconnect:
                return None
            headers, body = self.error_body(fault.status, fault.message, fault.error_type)
            headers = {**headers, **fault.headers}
            if fault.retry_after is not None:
                headers["retry-after"] = _seconds(fault.retry_after)
            return fault.status, headers, body
        route = self.routes().get((recorded.method, urlsplit(recorded.path).path))
        if route is None:
            headers, body = self.error_body(404, f"no route {recorded.method} {recorded.path}", None)
            return 404, headers, body
        try:
            return route(recorded)
        except ProtocolError as exc:
            headers, body = self.error_body(exc.status, exc.message, exc.error_type)
            inner = body.get("error")
            if isinstance(inner, dict):
                inner.update({k: v for k, v in (("param", exc.param), ("code", exc.code)) if v is not None})
            return exc.status, headers, body
        except Exception as exc:  # a responder's bug must reach the test, not hang the client
            message = f"responder failed: {type(exc).__name__}: {exc}"
            with self._lock:
                self.errors.append(message)
            headers, body = self.error_body(500, message, None)
            return 500, {**headers, "x-should-retry": "false"}, body


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def setup(self) -> None:
            super().setup()
            # As real servers (uvicorn, vLLM's) do: without it the body, written after the
            # headers, waits for the client's delayed ACK, 40 ms a response on Linux.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with server._lock:
                    server._connections.discard(self.connection)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            recorded = RecordedRequest(self.command, self.path,
                                       {k.lower(): v for k, v in self.headers.items()}, raw, body)
            outcome = server._handle(recorded)
            if outcome is None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status, headers, payload = outcome
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: a test's output is for the test."""

    return Handler
