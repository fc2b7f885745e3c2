"""A loopback stand-in for the Anthropic Messages API (`POST /v1/messages`, non-streaming).

It checks what the real API checks that matters to sia (credentials, `anthropic-version`,
the body's shape, tool and `tool_choice` consistency, `cache_control` blocks, the
sampling parameters that version 2026-10-21 refuses, unknown fields) and answers with
real message objects. It simulates prompt caching: a prefix marked with `cache_control`
of at least the model's minimum cacheable length (`min_cache_tokens_for`, or the
`min_cache_tokens` the server was built with) is written to the cache the first time and
read from it after, so usage carries realistic `cache_creation_input_tokens` /
`cache_read_input_tokens`; a shorter prefix is silently not cached, as the API does.
Models that only allow adaptive thinking (`ADAPTIVE_ONLY_MODELS`) refuse a `tool_choice`
that forces a tool, and `thinking` of type "enabled" or "disabled", with a 400.

The answer comes from `responder(request_json)`, returning:
  * `str` — one text block, `stop_reason` "end_turn";
  * `dict` — the input of a tool call to the tool `tool_choice` forces (or the only tool);
  * `Reply` — full control (text and/or tool call, stop reason, usage);
  * `list` — raw content blocks, sent as they are.

`converse(*turns)` scripts a tool conversation instead (see `sia.testing.loopback.Conversation`).
Tool use is checked as the API checks it, with its wording: every `tool_use` answered by a
`tool_result` in the next message, no result without its call, tools defined whenever the
conversation holds either. Always-thinking models start each answer with a signed thinking
block and refuse a continued tool conversation whose last assistant turn does not start
with it, or returns it with a signature that does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from sia.testing.loopback import (
    JSON,
    CallTools,
    Conversation,
    Fault,
    FinalAnswer,
    IssuedCall,
    LoopbackServer,
    ProtocolError,
    RecordedRequest,
    Reply,
    Route,
    SeenResult,
    ToolExchange,
    estimate_tokens,
)

Responder = Callable[[JSON], "str | dict[str, Any] | Reply | list[dict[str, Any]]"]

NEW_API_VERSION = "2026-10-21"
"""From this version on, `temperature`, `top_p` and `top_k` are refused."""

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
                529: "overloaded_error"}
_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "metadata",
    "stop_sequences", "stream", "thinking", "output_config", "service_tier", "cache_control",
    "container", "diagnostics", "inference_geo", "speed", "user_profile_id", "workspace_id",
    "mcp_servers", "context_management", "temperature", "top_p", "top_k",
})
_SAMPLING = ("temperature", "top_p", "top_k")

MIN_CACHE_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 4096), ("claude-opus-4-5", 4096), ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048), ("claude-3-5-haiku", 2048), ("claude-3-haiku", 2048),
    ("claude-sonnet-4-5", 1024), ("claude-opus-4-1", 1024), ("claude-opus-4", 1024),
    ("claude-sonnet-4", 1024), ("claude-3-7-sonnet", 1024),
)
"""Minimum cacheable prompt length by model-name prefix, first match wins (Anthropic's prompt
caching guide, "Cache limitations"; Sonnet 4.6 at 2048 as the guide's later table and the
behaviour reported in anthropic-sdk-python issue 1194 agree). Other models: 1024."""

ADAPTIVE_ONLY_MODELS: tuple[str, ...] = (
    "claude-opus-4-7", "claude-mythos-preview", "claude-mythos-5", "claude-fable-5")
"""Models whose thinking is always adaptive (the adaptive-thinking guide: manual and disabled
thinking return a 400 on them); forced tool use is incompatible with thinking."""

FORCED_TOOL_WITH_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
"""The API's 400 message for `tool_choice` "any"/"tool" while thinking is on."""


CACHE_LOOKBACK_BLOCKS = 20
"""How many blocks back from a breakpoint the API looks for an earlier cache entry (the
prompt caching guide: "the system automatically checks for cache hits at all previous
content block boundaries", up to about 20 blocks before each explicit breakpoint)."""


def min_cache_tokens_for(model: str) -> int:
    """The shortest prefix `model` caches; below it `cache_control` silently does nothing."""
    return next((tokens for prefix, tokens in MIN_CACHE_TOKENS if model.startswith(prefix)), 1024)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def default_responder(request: JSON) -> str | dict[str, Any]:
    """Answers a forced tool call with `{}` and anything else with a short fixed text."""
    return {} if request.get("tool_choice", {}).get("type") == "tool" else "ok"


class AnthropicServer(LoopbackServer):
    """`with AnthropicServer(responder) as srv:` then point the SDK at `srv.base_url`.

    `api_key` is the key the server accepts (None accepts any non-empty key), sent as
    `x-api-key` or `Authorization: Bearer` (SDK 2.x sends the latter; with both, the API
    uses `x-api-key`).
    """

    def __init__(self, responder: Responder = default_responder, *, api_key: str | None = "test-key",
                 min_cache_tokens: int | None = None) -> None:
        super().__init__()
        self.responder = responder
        self.api_key = api_key
        self.min_cache_tokens = min_cache_tokens
        self._cached_prefixes: set[str] = set()
        self._count = 0
        self._count_lock = threading.Lock()

    def __enter__(self) -> AnthropicServer:
        self.start()
        return self

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/v1/messages"): self._messages}

    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]:
        request_id = f"req_loopback_{self._next():06d}"
        kind = error_type or _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return ({"request-id": request_id},
                {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a provider, or a `sia` subprocess, at this server."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.api_key or "test-key"}

    def converse(self, *turns: CallTools | FinalAnswer) -> Conversation:
        """Answer the next requests with a scripted tool conversation (see `Conversation`)."""
        conversation = Conversation(turns, tool_exchange, id_prefix="toolu_loopback_")
        self.responder = conversation
        return conversation

    @property
    def message_requests(self) -> list[JSON]:
        """The JSON bodies of every `POST /v1/messages` received, faulted or not."""
        return [r.body for r in self.requests if r.path.startswith("/v1/messages") and r.body is not None]

    def _next(self) -> int:
        with self._count_lock:
            self._count += 1
            return self._count

    def _messages(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        self._check_headers(request)
        body = request.body
        if not isinstance(body, dict):
            raise ProtocolError(400, "request body must be a JSON object")
        version = request.headers["anthropic-version"]
        _check_body(body, version)
        content, stop_reason, usage_override = _answer(self.responder(body), body)
        if _thinks(body):
            content = [_thinking_block(len(self.message_requests)), *content]
        has_tool = any(block.get("type") == "tool_use" for block in content)
        message = {
            "id": f"msg_loopback_{self._next():06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason or ("tool_use" if has_tool else "end_turn"),
            "stop_sequence": None,
            "usage": {**self._usage(body, content), **usage_override},
        }
        return 200, {"request-id": f"req_loopback_{self._next():06d}"}, message

    def _check_headers(self, request: RecordedRequest) -> None:
        headers = request.headers
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
        if not key:
            raise ProtocolError(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            raise ProtocolError(401, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            raise ProtocolError(400, "anthropic-version header is required")
        if "application/json" not in headers.get("content-type", ""):
            raise ProtocolError(400, "content-type must be application/json")

    def _usage(self, body: JSON, content: list[JSON]) -> dict[str, Any]:
        """Token counts, with prompt caching simulated as the API does it: the prefix up to each
        breakpoint is written to the cache; a request reads the longest prefix cached before
        that ends at a breakpoint or up to `CACHE_LOOKBACK_BLOCKS` blocks before one, and
        writes the rest up to its last breakpoint, as a conversation does turn after turn."""
        prefixes, marked, rest = _prompt_blocks(body)
        minimum = self.min_cache_tokens or min_cache_tokens_for(body["model"])
        last = prefixes[marked[-1]] if marked else ""
        written = read = 0
        if marked and estimate_tokens(last) >= minimum:
            looked_at = sorted({cut for mark in marked
                                for cut in range(max(0, mark - CACHE_LOOKBACK_BLOCKS + 1), mark + 1)})
            model = body["model"]
            with self._count_lock:
                hits = [cut for cut in looked_at if _cache_key(model, prefixes[cut]) in self._cached_prefixes]
                self._cached_prefixes.update(_cache_key(model, prefixes[mark]) for mark in marked)
            read = estimate_tokens(prefixes[hits[-1]]) if hits else 0
            written = estimate_tokens(last) - read
        uncached = estimate_tokens(rest) + (0 if (written or read) else estimate_tokens(last))
        out_text = "".join(_block_text(block) for block in content)
        return {
            "input_tokens": max(1, uncached),
            "output_tokens": max(1, estimate_tokens(out_text)),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        }


def _answer(answer: Any, body: JSON) -> tuple[list[JSON], str | None, dict[str, int]]:
    """A responder's answer as `(content blocks, stop_reason or None, usage overrides)`."""
    if isinstance(answer, str):
        return [{"type": "text", "text": answer}], None, {}
    if isinstance(answer, list):
        return answer, None, {}
    if isinstance(answer, dict):
        answer = Reply(tool_input=answer)
    if not isinstance(answer, Reply):
        raise TypeError(f"responder returned {type(answer).__name__}; expected str, dict, Reply or list")
    blocks: list[JSON] = []
    if answer.text:
        blocks.append({"type": "text", "text": answer.text})
    if answer.tool_input is not None:
        blocks.append({"type": "tool_use", "id": f"toolu_loopback_{len(blocks):02d}",
                       "name": answer.tool_name or _forced_tool(body), "input": dict(answer.tool_input)})
    blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": _input_of(call)}
               for call in answer.tool_calls]
    return blocks, answer.stop_reason, dict(answer.usage or {})


def _input_of(call: IssuedCall) -> Any:
    """A call's `input`: raw arguments text is sent as the JSON value it encodes, or as a string."""
    if not isinstance(call.arguments, str):
        return dict(call.arguments)
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def tool_exchange(body: JSON) -> ToolExchange:
    """The `tool_use` blocks of assistant messages and the `tool_result` blocks of user messages."""
    calls: list[IssuedCall] = []
    results: list[SeenResult] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if block.get("type") == "tool_use":
                calls.append(IssuedCall(block["id"], block["name"], block["input"]))
            elif block.get("type") == "tool_result":
                results.append(SeenResult(block["tool_use_id"], _text_of(block.get("content", "")),
                                          bool(block.get("is_error", False))))
    offered = frozenset(str(tool.get("name")) for tool in body.get("tools") or [])
    return ToolExchange(tuple(calls), tuple(results), offered)


THINKING_KEY = b"loopback-thinking-signature"


def _thinking_block(number: int) -> JSON:
    """The block an always-thinking model starts each answer with, signed so its return can be checked."""
    text = f"(loopback thinking {number})"
    return {"type": "thinking", "thinking": text, "signature": _signature(text)}


def _signature(text: str) -> str:
    return hmac.new(THINKING_KEY, text.encode(), hashlib.sha256).hexdigest()


def _thinks(body: JSON) -> bool:
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    return str(body["model"]).startswith(ADAPTIVE_ONLY_MODELS) or kind in ("enabled", "adaptive")


def _forced_tool(body: JSON) -> str:
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return str(choice["name"])
    tools = body.get("tools") or []
    if len(tools) == 1:
        return str(tools[0]["name"])
    raise TypeError("responder returned a tool input, but the request forces no tool and has "
                    f"{len(tools)} tools; return Reply(tool_input=..., tool_name=...)")


def _text_of(content: Any) -> str:
    """The text a content value holds, tool calls and results included (for token estimates)."""
    if isinstance(content, str):
        return content
    return "".join(_block_text(block) for block in content or [] if isinstance(block, dict))


def _block_text(block: JSON) -> str:
    kind = block.get("type")
    if kind == "tool_use":
        return f"{block.get('name', '')}{json.dumps(block.get('input'), sort_keys=True)}"
    if kind == "tool_result":
        return _text_of(block.get("content", ""))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return str(block.get("text", ""))


def _cache_key(model: str, prefix: str) -> str:
    return hashlib.sha256(f"{model}\0{prefix}".encode()).hexdigest()


def _prompt_blocks(body: JSON) -> tuple[list[str], list[int], str]:
    """The prompt as text cut after each of its blocks: the prefix ending at each block, the
    indices of the blocks that carry `cache_control`, and the text after the last of those.

    The prefix runs tools → system → messages, as the API caches it.
    """
    pieces: list[tuple[str, bool]] = []
    for tool in body.get("tools") or []:
        pieces.append((json.dumps(tool, sort_keys=True), bool(tool.get("cache_control"))))
    system = body.get("system")
    if isinstance(system, str):
        pieces.append((system, False))
    elif isinstance(system, list):
        pieces += [(block.get("text", ""), bool(block.get("cache_control"))) for block in system]
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            pieces += [(_text_of([block]), bool(block.get("cache_control"))) for block in content]
        else:
            pieces.append((_text_of(content), False))
    prefixes = list(itertools.accumulate(text for text, _ in pieces))
    marked = [i for i, (_, has_mark) in enumerate(pieces) if has_mark]
    start = marked[-1] + 1 if marked else 0
    return prefixes, marked, "".join(t for t, _ in pieces[start:])


def _check_cache_control(where: str, block: Any) -> None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    if control is None:
        return
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        raise ProtocolError(400, f"{where}.cache_control.type: Input should be 'ephemeral'")
    if control.get("ttl", "5m") not in ("5m", "1h"):
        raise ProtocolError(400, f"{where}.cache_control.ttl: Input should be '5m' or '1h'")


def _check_thinking(body: JSON) -> None:
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    adaptive_only = str(body["model"]).startswith(ADAPTIVE_ONLY_MODELS)
    if adaptive_only and kind in ("enabled", "disabled"):
        raise ProtocolError(400, f"thinking.type: '{kind}' is not supported for this model. "
                                 f"Use 'adaptive' instead.")
    thinks = adaptive_only or kind in ("enabled", "adaptive")
    forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool")
    if thinks and forced:
        raise ProtocolError(400, FORCED_TOOL_WITH_THINKING)


_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _check_tool_blocks(messages: list[JSON], tool_names: list[str]) -> None:
    """Tool calls and results as the API checks them, with its wording: `tool_use` only from the
    assistant, each answered by a `tool_result` in the very next message, no result without its
    call, thinking blocks returned with the signature they were given, tools defined."""
    blocks = [(i, j, block) for i, message in enumerate(messages)
              if isinstance(message.get("content"), list)
              for j, block in enumerate(message["content"]) if isinstance(block, dict)]
    if any(block.get("type") in ("tool_use", "tool_result") for _, _, block in blocks) and not tool_names:
        raise ProtocolError(400, "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    asked: dict[int, list[str]] = {}
    for i, j, block in blocks:
        kind, role = block.get("type"), messages[i]["role"]
        if kind == "tool_use":
            if role != "assistant":
                raise ProtocolError(400, f"messages.{i}.content.{j}: `tool_use` blocks may only appear in "
                                         "`assistant` messages")
            if not _TOOL_USE_ID.match(str(block.get("id", ""))) or not isinstance(block.get("input"), dict):
                raise ProtocolError(400, f"messages.{i}.content.{j}.tool_use: needs an `id` matching "
                                         "'^[a-zA-Z0-9_-]+$', a `name` and an object `input`")
            asked.setdefault(i, []).append(block["id"])
        elif kind == "tool_result":
            previous = asked.get(i - 1, [])
            if role != "user" or block.get("tool_use_id") not in previous:
                raise ProtocolError(400, f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                                         f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                                         "block must have a corresponding `tool_use` block in the previous message.")
        elif kind == "thinking" and block.get("signature") != _signature(str(block.get("thinking", ""))):
            raise ProtocolError(400, f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
    for i, ids in asked.items():
        following = messages[i + 1] if i + 1 < len(messages) else None
        content = following.get("content") if following else None
        answered = {block.get("tool_use_id") for block in content if isinstance(block, dict)} \
            if isinstance(content, list) else set()
        missing = [call_id for call_id in ids if call_id not in answered]
        if missing:
            raise ProtocolError(400, f"messages.{i + 1}: `tool_use` ids were found without `tool_result` "
                                     f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                                     "must have a corresponding `tool_result` block in the next message.")


def _check_thinking_returned(body: JSON) -> None:
    """A thinking model's last assistant turn that called tools must start with its thinking block."""
    if not _thinks(body):
        return
    messages = body["messages"]
    last = next((i for i in reversed(range(len(messages))) if messages[i]["role"] == "assistant"), None)
    content = messages[last].get("content") if last is not None else None
    if not isinstance(content, list) or not any(
            isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
        return
    first = content[0].get("type") if isinstance(content[0], dict) else None
    if first not in ("thinking", "redacted_thinking"):
        raise ProtocolError(400, f"messages.{last}.content.0.type: Expected `thinking` or "
                                 f"`redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final "
                                 "`assistant` message must start with a thinking block (preceeding the "
                                 "lastmost set of `tool_use` and `tool_result` blocks).")


def _check_body(body: JSON, version: str) -> None:
    """Refuse what the real API refuses, with its wording where it matters."""
    for name in body:
        if name not in _FIELDS:
            raise ProtocolError(400, f"{name}: Extra inputs are not permitted")
    if version >= NEW_API_VERSION:
        for name in _SAMPLING:
            if name in body:
                raise ProtocolError(400, f"{name}: Extra inputs are not permitted")
    if body.get("stream"):
        raise ProtocolError(400, "stream: this loopback server answers non-streaming requests only")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ProtocolError(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ProtocolError(400, "max_tokens: Field required (a positive integer)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ProtocolError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_cache_control(f"messages.{i}.content.{j}", block)
        elif not isinstance(content, str):
            raise ProtocolError(400, f"messages.{i}.content: Input should be a string or a list of blocks")
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise ProtocolError(400, f"system.{i}: Input should be a text block")
            _check_cache_control(f"system.{i}", block)
    elif system is not None and not isinstance(system, str):
        raise ProtocolError(400, "system: Input should be a string or a list of text blocks")
    names: list[str] = []
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not _TOOL_NAME.match(str(tool.get("name", ""))):
            raise ProtocolError(400, f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if "type" not in tool and (not isinstance(schema, dict) or schema.get("type") != "object"):
            raise ProtocolError(400, f"tools.{i}.input_schema.type: Input should be 'object'")
        _check_cache_control(f"tools.{i}", tool)
        names.append(tool["name"])
    if len(set(names)) != len(names):
        raise ProtocolError(400, "tools: Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise ProtocolError(400, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if kind == "tool" and choice.get("name") not in names:
            raise ProtocolError(400, f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
        if kind in ("any", "tool") and not names:
            raise ProtocolError(400, "tool_choice: tools must be provided when tool_choice is 'any' or 'tool'")
    _check_tool_blocks(messages, names)
    _check_thinking(body)
    _check_thinking_returned(body)
    if version < NEW_API_VERSION and "temperature" in body:
        temperature = body["temperature"]
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1:
            raise ProtocolError(400, "temperature: Input should be between 0 and 1")


__all__ = ["ADAPTIVE_ONLY_MODELS", "FORCED_TOOL_WITH_THINKING", "MIN_CACHE_TOKENS", "AnthropicServer",
           "Fault", "Reply", "default_responder", "min_cache_tokens_for"]
