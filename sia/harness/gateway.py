"""The model gateway: an OpenAI-compatible server on one Unix socket per episode.

The runtime starts one gateway per adapter. Each episode gets its own listening socket,
`<socket dir>/<random>.sock`, which the sandbox binds in as the harness's only way out:
a call is attributed to the episode whose socket accepted the connection, never to
anything the harness says, so an episode can spend only its own budget (there is no
token to steal, and under bubblewrap no other episode's socket to see). A closed
episode's socket is gone. Every call lands in the episode's trajectory as a `ModelCall`
with its prompt, effective parameters, completions, token ids, log-probabilities and
latency. Per-episode budgets (calls, completion tokens) answer 429 when spent; a backend
failure answers 502. Both are recorded, so a trajectory explains itself.

A harness is an adversary here too, so nothing it sends can make the gateway allocate
or wait without bound. The gateway reads HTTP/1.1 itself (a bad request line or header is a
400, a method other than GET and POST a 501, both closing the connection); the request line
and headers share a byte budget (431 past it),
a body needs a Content-Length that is present (411), a non-negative integer (400) and
within `max_body_bytes` (413), refused before any of the body is read; every connection
has a socket timeout, and an episode is served on at most `max_connections` at once (more
wait in the socket's listen queue).

Every gateway of a process puts its sockets in one directory (`socket_directory`), so that
a harness's warm sandbox (`sia.harness.forkserver`), which binds that directory in, serves
its episodes whichever gateway they use: the smoke run's, the next drive's, the next
adapter's. An episode sees only its own socket either way.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import secrets
import selectors
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from sia.harness.backends import Completion, SamplingParams, TargetBackend

Endpoint = Literal["completions", "chat"]


class GatewayLimits(BaseModel):
    """Per-episode budgets; `max_tokens` asked above what is left is lowered, not refused."""

    model_config = ConfigDict(frozen=True)

    max_calls: int = 64
    max_completion_tokens: int = 32_768
    max_tokens_per_call: int = 1024
    max_n: int = 16
    max_prompts: int = 16
    max_body_bytes: int = 1 << 20
    max_head_bytes: int = 16 << 10
    max_connections: int = 4
    socket_timeout_s: float = 10.0


DEFAULT_GATEWAY_LIMITS = GatewayLimits()


class ModelCall(BaseModel):
    """One request of one episode, as served (or refused)."""

    model_config = ConfigDict(frozen=True)

    index: int
    endpoint: Endpoint
    status: int
    prompts: list[str]
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams | None = None
    generations: list[Completion] = []
    error: str | None = None
    latency_s: float = 0.0


@dataclass
class _Episode:
    episode_id: str
    seed: int
    listener: socket.socket
    path: Path
    calls: list[ModelCall] = field(default_factory=list)
    started: int = 0
    tokens: int = 0
    connections: set[socket.socket] = field(default_factory=set)
    paused: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def render_chat(messages: list[dict[str, Any]]) -> str:
    """The plain layout used when a backend has no chat template of its own."""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def _call_seed(episode: _Episode, index: int) -> int:
    """A seed that depends on the episode and the call's position only, so runs can be repeated."""
    digest = hashlib.sha256(f"{episode.seed}:{episode.episode_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


_DIRECTORIES: dict[Path | None, Path] = {}
_DIRECTORIES_LOCK = threading.Lock()


MEMORY_ROOT = Path("/dev/shm")


def socket_directory(root: Path | None = None) -> Path:
    """This process's directory of episode sockets under `root`: private to its user, made on
    first use, removed at exit. By default in memory (`MEMORY_ROOT`, else the system's
    temporary directory): every episode binds a socket and unlinks it, churn that a disk
    filesystem pays for (ext4's inode allocator reads each recently deleted inode it passes
    over, so the binds grow slower as the episodes add up)."""
    if root is None and os.access(MEMORY_ROOT, os.W_OK | os.X_OK) and MEMORY_ROOT.is_dir():
        root = MEMORY_ROOT
    with _DIRECTORIES_LOCK:
        directory = _DIRECTORIES.get(root)
        if directory is None or not directory.is_dir():
            directory = _DIRECTORIES[root] = Path(tempfile.mkdtemp(prefix="sia-gateway-", dir=root))
            atexit.register(_remove, directory, os.getpid())
        return directory


def _remove(directory: Path, owner: int) -> None:
    if os.getpid() == owner:  # not a forked child's exit: the directory is its parent's
        shutil.rmtree(directory, ignore_errors=True)


class ModelGateway:
    """Serve `backend` to harnesses, one Unix socket and one trajectory per open episode."""

    def __init__(self, backend: TargetBackend, *, limits: GatewayLimits = DEFAULT_GATEWAY_LIMITS,
                 root: Path | None = None) -> None:
        self.backend = backend
        self.limits = limits
        self.directory = socket_directory(root)
        self._episodes: dict[str, _Episode] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        self._closing = False
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._accept_loop, name="sia-gateway", daemon=True)
        self._thread.start()

    def open_episode(self, episode_id: str, *, seed: int = 0) -> Path:
        """Start recording `episode_id`; return the socket its harness (and only it) may use."""
        with self._lock:
            if episode_id in self._episodes:
                raise ValueError(f"episode {episode_id!r} is already open")
            path = self.directory / f"{secrets.token_hex(12)}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(16)
            listener.setblocking(False)
            episode = self._episodes[episode_id] = _Episode(episode_id, seed, listener, path)
            self._selector.register(listener, selectors.EVENT_READ, episode)
        return path

    def close_episode(self, episode_id: str) -> list[ModelCall]:
        """Stop accepting calls for `episode_id` and return its trajectory in call order."""
        with self._lock:
            episode = self._episodes.pop(episode_id)
            with episode.lock:
                episode.closed = True
                if not episode.paused:
                    self._selector.unregister(episode.listener)
                for connection in episode.connections:
                    _shut(connection)
        episode.listener.close()
        episode.path.unlink(missing_ok=True)
        with episode.lock:
            return sorted(episode.calls, key=lambda call: call.index)

    def open_connections(self, episode_id: str) -> int:
        """How many connections of an open episode are being served now."""
        with self._lock:
            episode = self._episodes[episode_id]
        with episode.lock:
            return len(episode.connections)

    def close(self) -> None:
        self._closing = True
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            episodes, self._episodes = list(self._episodes.values()), {}
        for episode in episodes:
            episode.listener.close()
            episode.path.unlink(missing_ok=True)
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closing:
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_read, 64)
                    continue
                try:
                    connection, _ = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                self._admit(key.data, connection)

    def _admit(self, episode: _Episode, connection: socket.socket) -> None:
        """Serve `connection` on its own thread; at `max_connections` stop accepting for the
        episode, so further connections wait in the kernel's listen queue (bounded, and
        costing the gateway nothing) instead of failing a harness that calls in parallel."""
        with self._lock, episode.lock:
            if episode.closed:
                connection.close()
                return
            episode.connections.add(connection)
            if len(episode.connections) >= self.limits.max_connections:
                self._selector.unregister(episode.listener)
                episode.paused = True
        connection.setblocking(True)
        connection.settimeout(self.limits.socket_timeout_s)
        threading.Thread(target=self._converse, args=(episode, connection), daemon=True,
                         name=f"sia-gateway-{episode.episode_id[:12]}").start()

    def _converse(self, episode: _Episode, connection: socket.socket) -> None:
        try:
            with connection.makefile("rb") as reader:
                while self._answer(episode, connection, reader):
                    pass
        except OSError:
            pass
        finally:
            with self._lock, episode.lock:
                episode.connections.discard(connection)
                if episode.paused and not episode.closed:
                    self._selector.register(episode.listener, selectors.EVENT_READ, episode)
                    episode.paused = False
            _shut(connection)
            connection.close()

    def _answer(self, episode: _Episode, connection: socket.socket, reader: BinaryIO) -> bool:
        """Read the connection's next request and answer it; False once the connection ends.

        HTTP/1.1 as the runner and the SDKs speak it, written out: `http.server` parses every
        head with the `email` package, about a quarter of the gateway's CPU per call."""
        try:
            lines = _read_head(reader, self.limits.max_head_bytes)
            if lines is None:
                return False
            request = _parse_head(lines)
        except _Refusal as bad:
            _send(connection, bad.status, _error_body(bad.status, str(bad)), close=True)
            return False
        close = _closes(request)
        route = _route(request.path)
        if request.method == "GET" and route == "models":
            status, payload = 200, {"object": "list", "data": [
                {"id": self.backend.name, "object": "model", "owned_by": "sia"}]}
        elif request.method == "GET":
            status, payload = 404, _error_body(404, f"no such route: GET {request.path[:200]}")
        elif request.method == "POST":
            length = _body_length(request.headers, self.limits.max_body_bytes)
            if isinstance(length, tuple):
                _send(connection, *length, close=True)
                return False
            if request.headers.get("expect", [""])[0].lower() == "100-continue":
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            raw = reader.read(length)
            if len(raw) < length:
                return False  # the client ended inside the body
            endpoint = ROUTES.get(route)
            if endpoint is None:
                status, payload = 404, _error_body(404, f"no such route: POST {request.path[:200]}")
            else:
                try:
                    body = json.loads(raw)
                except (ValueError, RecursionError):
                    body = None
                status, payload = self.serve(episode, endpoint, body)
        else:
            status, payload, close = 501, _error_body(501, f"unsupported method {request.method[:20]!r}"), True
        _send(connection, status, payload, close=close)
        return not close

    def serve(self, episode: _Episode, endpoint: Endpoint, body: Any) -> tuple[int, dict[str, Any]]:
        """Answer one attributed request and record it, whatever its outcome."""
        started = time.perf_counter()
        with episode.lock:
            index = episode.started
            episode.started += 1
        prompts: list[str] = []
        messages: list[dict[str, Any]] | None = None
        params: SamplingParams | None = None
        try:
            if not isinstance(body, dict):
                raise _Refusal(400, "the request body must be a JSON object")
            prompts, messages = self._prompts(endpoint, body)
            params = self._reserve(episode, index, body, len(prompts))
            try:
                generations = self.backend.generate(prompts, params)
            except Exception as exc:
                self._refund(episode, params, len(prompts), [])
                raise _Refusal(502, f"backend error: {type(exc).__name__}: {exc}"[:500]) from exc
            if len(generations) != len(prompts) * params.n:
                self._refund(episode, params, len(prompts), [])
                raise _Refusal(502, f"backend returned {len(generations)} generations, "
                                    f"expected {len(prompts) * params.n}")
            self._refund(episode, params, len(prompts), generations)
        except _Refusal as refusal:
            self._record(episode, ModelCall(index=index, endpoint=endpoint, status=refusal.status,
                                            prompts=prompts, messages=messages, params=params,
                                            error=str(refusal),
                                            latency_s=round(time.perf_counter() - started, 6)))
            return refusal.status, _error_body(refusal.status, str(refusal))
        self._record(episode, ModelCall(index=index, endpoint=endpoint, status=200, prompts=prompts,
                                        messages=messages, params=params, generations=generations,
                                        latency_s=round(time.perf_counter() - started, 6)))
        return 200, self._response(endpoint, index, params, generations)

    def _prompts(self, endpoint: Endpoint,
                 body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]] | None]:
        if endpoint == "chat":
            messages = body.get("messages")
            if not (isinstance(messages, list) and messages
                    and all(isinstance(m, dict) and isinstance(m.get("content", ""), str)
                            for m in messages)):
                raise _Refusal(400, "`messages` must be a non-empty list of {role, content} objects")
            render = getattr(self.backend, "render_chat", render_chat)
            return [render(messages)], messages
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
            raise _Refusal(400, "`prompt` must be a string or a non-empty list of strings")
        if len(prompts) > self.limits.max_prompts:
            raise _Refusal(400, f"at most {self.limits.max_prompts} prompts per call")
        return prompts, None

    def _reserve(self, episode: _Episode, index: int, body: dict[str, Any],
                 n_prompts: int) -> SamplingParams:
        """Check the budgets and hold this call's worst-case tokens until it is answered."""
        stop = body.get("stop") or ()
        try:
            asked = SamplingParams(max_tokens=body.get("max_tokens") or 64,
                                   temperature=body.get("temperature", 1.0),
                                   top_p=body.get("top_p", 1.0), n=body.get("n") or 1,
                                   stop=(stop,) if isinstance(stop, str) else tuple(stop),
                                   seed=body["seed"] if isinstance(body.get("seed"), int)
                                   else _call_seed(episode, index))
        except (ValidationError, TypeError) as exc:
            raise _Refusal(400, f"invalid sampling parameters: {exc}"[:500]) from None
        if asked.n > self.limits.max_n:
            raise _Refusal(400, f"n is at most {self.limits.max_n}")
        if index >= self.limits.max_calls:
            raise _Refusal(429, f"the episode's budget of {self.limits.max_calls} calls is spent")
        streams = n_prompts * asked.n
        with episode.lock:
            left = self.limits.max_completion_tokens - episode.tokens
            max_tokens = min(asked.max_tokens, self.limits.max_tokens_per_call, left // streams)
            if max_tokens < 1:
                raise _Refusal(429, f"the episode's budget of {self.limits.max_completion_tokens} "
                                    f"completion tokens is spent")
            episode.tokens += max_tokens * streams
        return asked.model_copy(update={"max_tokens": max_tokens})

    def _refund(self, episode: _Episode, params: SamplingParams, n_prompts: int,
                generations: list[Completion]) -> None:
        """Replace the held worst case by the tokens actually generated."""
        used = sum(len(g.token_ids) for g in generations)
        with episode.lock:
            episode.tokens += used - params.max_tokens * n_prompts * params.n

    def _record(self, episode: _Episode, call: ModelCall) -> None:
        with episode.lock:
            episode.calls.append(call)

    def _response(self, endpoint: Endpoint, index: int, params: SamplingParams,
                  generations: list[Completion]) -> dict[str, Any]:
        usage = {"prompt_tokens": sum(len(g.prompt_token_ids) for g in generations[:: params.n]),
                 "completion_tokens": sum(len(g.token_ids) for g in generations)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"call-{index}", "created": 0, "model": self.backend.name, "usage": usage}
        if endpoint == "chat":
            choices: list[dict[str, Any]] = [{"index": i, "finish_reason": g.finish_reason,
                        "message": {"role": "assistant", "content": g.text}}
                       for i, g in enumerate(generations)]
            return {**base, "object": "chat.completion", "choices": choices}
        choices = [{"index": i, "text": g.text, "finish_reason": g.finish_reason,
                    "logprobs": None if g.logprobs is None else {"token_logprobs": g.logprobs}}
                   for i, g in enumerate(generations)]
        return {**base, "object": "text_completion", "choices": choices}


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error", 411: "invalid_request_error",
            413: "invalid_request_error", 429: "rate_limit_error",
            431: "invalid_request_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


CRLF = "\r\n"
ROUTES: dict[str, Endpoint] = {"completions": "completions", "chat/completions": "chat"}


class _Request(NamedTuple):
    method: str
    path: str
    version: str
    headers: dict[str, list[str]]
    """Lower-cased names, each with its values in order."""


def _read_head(reader: BinaryIO, budget: int) -> list[str] | None:
    """The request line and header lines of the connection's next request, or None where
    the connection ends before one. They share `budget` bytes: past it, 431, read no further
    (a refusal, answered before the connection is closed)."""
    lines: list[str] = []
    left = budget
    while True:
        line = reader.readline(left + 1)
        left -= len(line)
        if left < 0:
            raise _Refusal(431, "request line and headers too large")
        if not line:
            if lines:
                raise _Refusal(400, "the connection ended inside a request's head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue  # empty lines before a request line are skipped (RFC 9112, 2.2)
        lines.append(line.decode("latin-1").rstrip("\r\n"))


def _parse_head(lines: list[str]) -> _Request:
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _Refusal(400, f"bad request line: {lines[0][:100]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Refusal(400, f"bad header line: {line[:100]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return _Request(parts[0], parts[1], parts[2], headers)


def _body_length(headers: dict[str, list[str]], most: int) -> int | tuple[int, dict[str, Any]]:
    """The body's length, or the refusal to send without reading a byte of it."""
    if headers.get("transfer-encoding"):
        return 411, _error_body(411, "chunked bodies are not accepted: send a Content-Length")
    given = headers.get("content-length") or []
    if not given:
        return 411, _error_body(411, "a Content-Length is required")
    if len(set(given)) != 1 or not given[0].isdigit():
        return 400, _error_body(400, "Content-Length must be one non-negative integer")
    length = int(given[0])
    if length > most:
        return 413, _error_body(413, f"request body over {most} bytes")
    return length


def _route(path: str) -> str:
    """The route after /v1/ ('' when the path is not under /v1)."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return "/".join(parts[1:]) if parts[0] == "v1" else ""


def _closes(request: _Request) -> bool:
    """Whether the client asked to close after this request (HTTP/1.0 closes by default)."""
    tokens = {token.strip().lower() for value in request.headers.get("connection", [])
              for token in value.split(",")}
    return "close" in tokens or (request.version == "HTTP/1.0" and "keep-alive" not in tokens)


def _send(connection: socket.socket, status: int, payload: dict[str, Any], *, close: bool) -> None:
    body = json.dumps(payload).encode("utf-8")
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + CRLF if close else ''}{CRLF}")
    connection.sendall(head.encode("ascii") + body)
