"""The model gateway: an OpenAI-compatible loopback server that records every call per episode.

The runtime starts one gateway per generation. Each episode gets its own base URL,
`http://127.0.0.1:PORT/ep/<token>/v1`, with an unguessable token: calls are attributed
to the episode by the URL the sandbox handed out, never by anything the harness says,
and a call with an unknown or closed token (or none) is refused with 403. Every
attributed call, refused or not, lands in the episode's trajectory as a `ModelCall`
with its prompt, effective parameters, completions, token ids, log-probabilities and
latency. Per-episode budgets (calls, completion tokens) answer 429 when spent; a
backend failure answers 502. Both are recorded, so a trajectory explains itself.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from sia.harness.backends import Generation, SamplingParams, TargetBackend

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
    generations: list[Generation] = []
    error: str | None = None
    latency_s: float = 0.0


@dataclass
class _Episode:
    episode_id: str
    seed: int
    calls: list[ModelCall] = field(default_factory=list)
    started: int = 0
    tokens: int = 0
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


class ModelGateway:
    """Serve `backend` to harnesses on loopback, one trajectory per open episode."""

    def __init__(self, backend: TargetBackend, *, limits: GatewayLimits = DEFAULT_GATEWAY_LIMITS,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self.limits = limits
        self.refused_unattributed = 0
        self._episodes: dict[str, _Episode] = {}
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="sia-gateway",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def open_episode(self, episode_id: str, *, seed: int = 0) -> str:
        """Start recording `episode_id` and return the base URL its harness must use."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            if episode_id in self._tokens:
                raise ValueError(f"episode {episode_id!r} is already open")
            self._tokens[episode_id] = token
            self._episodes[token] = _Episode(episode_id, seed)
        return f"{self.url}/ep/{token}/v1"

    def close_episode(self, episode_id: str) -> list[ModelCall]:
        """Stop accepting calls for `episode_id` and return its trajectory in call order."""
        with self._lock:
            token = self._tokens.pop(episode_id)
            episode = self._episodes.pop(token)
        with episode.lock:
            return sorted(episode.calls, key=lambda call: call.index)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _episode(self, token: str) -> _Episode | None:
        with self._lock:
            return self._episodes.get(token)

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
                generations: list[Generation]) -> None:
        """Replace the held worst case by the tokens actually generated."""
        used = sum(len(g.token_ids) for g in generations)
        with episode.lock:
            episode.tokens += used - params.max_tokens * n_prompts * params.n

    def _record(self, episode: _Episode, call: ModelCall) -> None:
        with episode.lock:
            episode.calls.append(call)

    def _response(self, endpoint: Endpoint, index: int, params: SamplingParams,
                  generations: list[Generation]) -> dict[str, Any]:
        usage = {"prompt_tokens": sum(len(g.prompt_token_ids) for g in generations[:: params.n]),
                 "completion_tokens": sum(len(g.token_ids) for g in generations)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"call-{index}", "created": 0, "model": self.backend.name, "usage": usage}
        if endpoint == "chat":
            choices = [{"index": i, "finish_reason": g.finish_reason,
                        "message": {"role": "assistant", "content": g.text}}
                       for i, g in enumerate(generations)]
            return {**base, "object": "chat.completion", "choices": choices}
        choices = [{"index": i, "text": g.text, "finish_reason": g.finish_reason,
                    "logprobs": None if g.logprobs is None else {"token_logprobs": g.logprobs}}
                   for i, g in enumerate(generations)]
        return {**base, "object": "text_completion", "choices": choices}


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def _handler_for(gateway: ModelGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            episode, route = self._route()
            if episode is None:
                return
            if route != "models":
                return self._send(404, _error_body(404, f"no such route: GET {self.path}"))
            self._send(200, {"object": "list", "data": [
                {"id": gateway.backend.name, "object": "model", "owned_by": "sia"}]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > gateway.limits.max_body_bytes:
                self.close_connection = True
                return self._send(413, _error_body(413, "request body too large"))
            raw = self.rfile.read(length)
            episode, route = self._route()
            if episode is None:
                return
            endpoint: Endpoint | None = {"completions": "completions",
                                         "chat/completions": "chat"}.get(route)
            if endpoint is None:
                return self._send(404, _error_body(404, f"no such route: POST {self.path}"))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            self._send(*gateway.serve(episode, endpoint, body))

        def _route(self) -> tuple[_Episode | None, str]:
            """The episode named by the path's token and the route after /v1/, or a 403 sent."""
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            episode = None
            if len(parts) >= 4 and parts[0] == "ep" and parts[2] == "v1":
                episode = gateway._episode(parts[1])
            if episode is None:
                with gateway._lock:
                    gateway.refused_unattributed += 1
                self._send(403, _error_body(403, "unknown or missing episode token"))
                return None, ""
            return episode, "/".join(parts[3:])

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the trajectory is the log."""

    return Handler
