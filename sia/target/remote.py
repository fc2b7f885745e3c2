"""The remote target backend: an OpenAI-compatible server (in practice vLLM) serving LoRA adapters by name.

A weight-training run samples the target on a GPU box, e.g.

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve openai/gpt-oss-120b --enable-lora ...

and publishes each trained adapter to it by name (`publish_adapter`), then reaches it
through `RemoteBackend(base_url, model, adapter=name)`. The server must be vLLM >=
`VLLM_MIN_VERSION` (0.12.0): LoRA on gpt-oss (a MoE) needs `GptOssForCausalLM` to
implement `SupportsLoRA`, which the v0.12.0 API reference shows and v0.10.2's does not
(FusedMoE LoRA is vllm-project/vllm PR 21229; issue 23610 tracks gpt-oss). Publishing to a
server that reports an older `/version` is refused. Training learns from the exact tokens
sampled, so `generate` asks vLLM for them (`return_token_ids`, since vLLM 0.10.2) and
refuses a server that does not send them: re-tokenizing the text would train on tokens
never sampled.

Chat goes through the model's own chat template: `render_chat` (the gateway's hook)
remembers the messages behind the prompt it returns, and `generate` sends those messages
to `POST /v1/chat/completions`, where vLLM renders them as the model was trained (the
harmony format for gpt-oss, whose model card says it will not work correctly otherwise)
and returns `prompt_token_ids` and per-choice `token_ids`; the reply text is the message
content (for gpt-oss, the final channel). The recorded prompt text is the plain
"role: content" layout of the messages; the token ids are what the model saw. A model
without a chat template (vLLM's 400) is prompted with that plain layout through
`/v1/completions`, like the local backend.

Conventions kept identical to the local backend (`sia.target.local`):

* `Completion.token_ids` excludes the token that ended the sample. vLLM includes it
  (the EOS with `stop_reason` None, or one of the model's other stop token ids, e.g.
  gpt-oss's `<|call|>`, with `stop_reason` that id); it is dropped here with its
  log-probability and recorded as `Completion.stop_token_id`, which the trainer appends
  for a "stop" finish (with no local model directory there is no config to read the EOS
  from). A stop *string* (`stop_reason` a str) keeps every token, as locally.
* Choices are prompt-major: vLLM numbers choice `index` = prompt_i * n + j.
* Log-probabilities: the local backend reports those of the sampling distribution
  (after temperature); vLLM does so with `--logprobs-mode processed_logprobs` (its
  default, `raw_logprobs`, reports the model's distribution before temperature).
* Every sampling parameter is sent explicitly, so the model's `generation_config.json`
  defaults, which vLLM applies to fields left out, never change what was asked.

vLLM keeps runtime-loaded adapters in memory only: after a server restart every call to
one is a 404. A backend built with the adapter's directory publishes it again and
repeats the call once.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sia.harness.backends import Completion, SamplingParams
from sia.target.http import JsonClient, Unreachable, error_message

VLLM_MIN_VERSION = (0, 12, 0)
"""The oldest vLLM sia supports: the first whose gpt-oss serves LoRA adapters (see module doc)."""

TOKEN_IDS_REQUIRED = (
    "the server at {url} returned no token ids for model {model!r}: weight training needs the "
    "exact sampled tokens. Serve the target with vLLM >= 0.12.0, which returns `prompt_token_ids` "
    "and `token_ids` when a request asks for `return_token_ids` (since 0.10.2)."
)
CHAT_MEMORY = 1024
"""Rendered chat prompts remembered for `generate` (the gateway calls it right after `render_chat`)."""



def api_root(base_url: str) -> str:
    """`http://host:8000` from `http://host:8000`, `http://host:8000/` or `http://host:8000/v1`."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _api_key(api_key_env: str | None) -> str | None:
    return os.environ.get(api_key_env) or None if api_key_env else None


class _AdapterGone(Exception):
    """The server no longer serves this backend's adapter (a 404 for it)."""


class _Refused(Exception):
    """The server refused the request as invalid (a 400); the message is the server's."""


class RemoteBackend:
    """A `TargetBackend` over vLLM's `/v1/completions` and `/v1/chat/completions`.

    `model` is the served base model name (`--served-model-name`, or the model path);
    with `adapter`, calls go to that LoRA adapter, which must have been loaded (at startup
    with `--lora-modules name=path`, or at runtime with `publish_adapter`). Given the
    adapter's `adapter_dir` (and the `shared_root` it was published through), a 404 for
    the adapter re-publishes it and repeats the call once. The API key, if the server
    wants one (`vllm serve --api-key`), is read from `api_key_env`.
    """

    def __init__(self, base_url: str, model: str, *, adapter: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 600.0,
                 adapter_dir: Path | None = None, shared_root: Path | None = None) -> None:
        if not model:
            raise ValueError("model must name the served base model")
        self.base_url = api_root(base_url)
        self.model = model
        self.adapter = adapter
        self.adapter_dir = adapter_dir
        self.shared_root = shared_root
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.name = adapter or model
        self._client: JsonClient | None = None
        self._lock = threading.Lock()
        self._chats: OrderedDict[str, tuple[dict[str, Any], ...]] = OrderedDict()
        self._has_chat_template: bool | None = None

    def _http(self) -> JsonClient:
        with self._lock:
            if self._client is None:
                self._client = JsonClient(self.base_url + "/v1", api_key=_api_key(self.api_key_env),
                                          timeout=self.timeout)
            return self._client

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The plain layout of `messages`, remembered so `generate` sends the messages themselves."""
        from sia.harness.gateway import render_chat

        text = render_chat([dict(m) for m in messages])
        with self._lock:
            self._chats[text] = tuple(dict(m) for m in messages)
            self._chats.move_to_end(text)
            while len(self._chats) > CHAT_MEMORY:
                self._chats.popitem(last=False)
        return text

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        if not prompts:
            return []
        with self._lock:
            chats = [self._chats.get(prompt) for prompt in prompts]
        try:
            return self._generate(prompts, chats, params)
        except _AdapterGone:
            if self.adapter is None or self.adapter_dir is None:
                raise RuntimeError(self._not_served_hint()) from None
            publish_adapter(self.base_url, self.adapter, self.adapter_dir, shared_root=self.shared_root,
                            api_key_env=self.api_key_env, timeout=self.timeout)
        try:
            return self._generate(prompts, chats, params)
        except _AdapterGone:
            raise RuntimeError(f"{self._not_served_hint()} (even after publishing it again)") from None

    def _generate(self, prompts: list[str], chats: list[tuple[dict[str, Any], ...] | None],
                  params: SamplingParams) -> list[Completion]:
        if not any(chats) or self._has_chat_template is False:
            return self._complete(prompts, params)
        generations: list[Completion] = []
        for prompt, messages in zip(prompts, chats, strict=True):
            answered = self._chat(messages, params) if messages else None
            generations += answered if answered is not None else self._complete([prompt], params)
        return generations

    def _served(self) -> str:
        return self.adapter or self.model

    def _not_served_hint(self) -> str:
        hint = (f"publish it first (sia.target.remote.publish_adapter) or start vLLM with "
                f"--lora-modules {self.adapter}=PATH" if self.adapter else
                "check the server's --served-model-name")
        return f"{self.base_url} does not serve model {self._served()!r}; {hint}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call, its failures turned into clear errors (a missing adapter into `_AdapterGone`)."""
        try:
            status, answer = self._http().post(path, body)
        except Unreachable as exc:
            raise RuntimeError(f"cannot reach the target server at {self.base_url}: {exc}") from exc
        if status == 200 and isinstance(answer, dict):
            return answer
        message = error_message(answer)
        if status == 404:
            if self.adapter is not None:
                raise _AdapterGone
            raise RuntimeError(f"{self._not_served_hint()} ({message})")
        if status == 401:
            raise RuntimeError(f"{self.base_url} refused the API key (from ${self.api_key_env}): {message}")
        if status == 400:
            raise _Refused(message)
        raise RuntimeError(f"{self.base_url} answered HTTP {status}: {message}")

    def _complete(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        request: dict[str, Any] = dict(
            model=self._served(), prompt=prompts, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, n=params.n, seed=params.seed,
            logprobs=1, return_token_ids=True)
        if params.stop:
            request["stop"] = list(params.stop)
        try:
            response = self._post("/completions", request)
        except _Refused as refused:
            raise RuntimeError(f"{self.base_url} refused the request: {refused}") from None
        generations: list[Completion] = []
        for choice in self._ordered(response.get("choices"), len(prompts), params.n):
            token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
            logprobs = None if token_logprobs is None else [
                float(p) if p is not None else 0.0 for p in token_logprobs]
            generations.append(self._generation(choice.get("text") or "", choice.get("prompt_token_ids"),
                                                choice.get("token_ids"), logprobs,
                                                choice.get("finish_reason"), choice.get("stop_reason")))
        return generations

    def _chat(self, messages: tuple[dict[str, Any], ...], params: SamplingParams) -> list[Completion] | None:
        """The chat endpoint's generations, or None when the model has no chat template."""
        request: dict[str, Any] = dict(
            model=self._served(), messages=list(messages), max_completion_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, n=params.n, seed=params.seed,
            logprobs=True, return_token_ids=True)
        if params.stop:
            request["stop"] = list(params.stop)
        try:
            response = self._post("/chat/completions", request)
        except _Refused as refused:
            if "chat template" not in str(refused):
                raise RuntimeError(f"{self.base_url} refused the chat request: {refused}") from None
            self._has_chat_template = False
            return None
        self._has_chat_template = True
        generations: list[Completion] = []
        for choice in self._ordered(response.get("choices"), 1, params.n):
            content = (choice.get("logprobs") or {}).get("content")
            logprobs = None if content is None else [float(item["logprob"]) for item in content]
            generations.append(self._generation((choice.get("message") or {}).get("content") or "",
                                                response.get("prompt_token_ids"), choice.get("token_ids"),
                                                logprobs, choice.get("finish_reason"),
                                                choice.get("stop_reason")))
        return generations

    def _ordered(self, choices: Any, n_prompts: int, n: int) -> list[dict[str, Any]]:
        if not isinstance(choices, list) or not all(
                isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
            raise RuntimeError(f"{self.base_url} answered without a list of indexed choices")
        ordered = sorted(choices, key=lambda choice: choice["index"])
        expected = n_prompts * n
        if len(ordered) != expected or [c["index"] for c in ordered] != list(range(expected)):
            raise RuntimeError(f"{self.base_url} returned choices {[c['index'] for c in ordered]} "
                               f"for {n_prompts} prompt(s) x n={n}")
        return ordered

    def _generation(self, text: str, prompt_ids: Any, ids: Any, logprobs: list[float] | None,
                    reason: Any, stop_reason: Any) -> Completion:
        if prompt_ids is None or ids is None:
            raise RuntimeError(TOKEN_IDS_REQUIRED.format(url=self.base_url, model=self._served()))
        ids = [int(token) for token in ids]
        if logprobs is not None and len(logprobs) != len(ids):
            raise RuntimeError(f"{self.base_url} returned {len(logprobs)} logprobs for {len(ids)} tokens")
        if reason not in ("stop", "length"):
            raise RuntimeError(f"{self.base_url} ended a completion with finish_reason {reason!r}")
        stop_token_id = None
        if reason == "stop" and not isinstance(stop_reason, str) and ids:
            stop_token_id = ids.pop()  # the EOS / stop token: sia's token_ids exclude it (module doc)
            logprobs = None if logprobs is None else logprobs[:-1]
        return Completion(text=text, prompt_token_ids=[int(t) for t in prompt_ids], token_ids=ids,
                          logprobs=logprobs, finish_reason=reason, stop_token_id=stop_token_id)


def _body_message(response: Any) -> str:
    try:
        return error_message(response.json())
    except ValueError:
        return response.text.strip()[:500]


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def stage_adapter(adapter_dir: Path, shared_root: Path, name: str) -> Path:
    """Copy `adapter_dir` to `shared_root/name/` (atomically, once) and return that path.

    Re-staging identical files is a no-op; a different adapter under a name already
    staged is refused, since the server would keep serving the old weights under it.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid adapter name {name!r}")
    source = Path(adapter_dir)
    if not (source / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{source} is not a peft adapter directory (no adapter_config.json)")
    target = Path(shared_root) / name
    if target.exists():
        if _same_tree(source, target):
            return target
        raise FileExistsError(f"{target} already holds a different adapter: publish it under a new "
                              f"name (e.g. its content hash)")
    Path(shared_root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=shared_root))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target.exists() and _same_tree(source, target)):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def publish_adapter(base_url: str, name: str, adapter_dir: Path, *, shared_root: Path | None,
                    api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 600.0) -> str:
    """Make the peft adapter in `adapter_dir` servable as model `name` and return `name`.

    Uses vLLM's runtime LoRA loading, `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`,
    which needs the server started with `--enable-lora` and the environment variable
    `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. The server reads the adapter from `lora_path`
    on its own file system: with `shared_root` (a directory both sides mount at the same
    path), the adapter is first copied to `shared_root/name/` and that path is sent;
    without it, `adapter_dir` itself is sent. Publishing again is a no-op: vLLM's 400
    "has already been loaded" counts as success once `/v1/models` confirms the name is
    served from the same path.
    """
    import httpx

    if not name:
        raise ValueError("an adapter needs a name")
    path = stage_adapter(adapter_dir, shared_root, name) if shared_root is not None else Path(adapter_dir)
    lora_path = str(Path(path).resolve())
    root = api_root(base_url)
    key = _api_key(api_key_env)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=root, headers=headers, timeout=timeout) as client:
            _check_version(client, root)
            response = client.post("/v1/load_lora_adapter",
                                   json={"lora_name": name, "lora_path": lora_path})
            if response.status_code == 200:
                return name
            message = _body_message(response)
            if response.status_code == 400 and "already been loaded" in message:
                served_from = _served_path(client, name)
                if served_from is not None and served_from != lora_path:
                    raise RuntimeError(f"{root} already serves an adapter named {name!r} from "
                                       f"{served_from}, not {lora_path}: publish under a new name")
                return name
    except httpx.ConnectError as exc:
        raise RuntimeError(f"cannot reach the vLLM server at {root} to load adapter {name!r}: {exc}. "
                           f"Is it running?") from exc
    except httpx.TimeoutException as exc:
        raise RuntimeError(f"the vLLM server at {root} did not answer loading {name!r} "
                           f"within {timeout}s") from exc
    if response.status_code == 404 and message in ("Not Found", ""):
        raise RuntimeError(f"{root} has no /v1/load_lora_adapter: start vLLM with --enable-lora and "
                           f"the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
    if response.status_code == 401:
        raise RuntimeError(f"{root} refused the API key (from ${api_key_env}) loading {name!r}: "
                           f"{message}")
    raise RuntimeError(f"{root} could not load adapter {name!r} from {lora_path} "
                       f"(HTTP {response.status_code}): {message}. The path must be readable by "
                       f"the server (pass shared_root= a directory it mounts at the same path).")


def server_version(text: str) -> tuple[int, int, int] | None:
    """`(0, 11, 1)` from "0.11.1", "0.11.1rc2" or "0.12.0+cu128"; None when it names no version."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _check_version(client: Any, root: str) -> None:
    """Refuse a vLLM older than `VLLM_MIN_VERSION` (by its `GET /version`; servers without one pass)."""
    try:
        response = client.get("/version")
        reported = response.json().get("version") if response.status_code == 200 else None
    except (ValueError, AttributeError):
        return
    version = server_version(str(reported)) if reported else None
    if version is not None and version < VLLM_MIN_VERSION:
        floor = ".".join(map(str, VLLM_MIN_VERSION))
        raise RuntimeError(f"{root} runs vLLM {reported}; sia needs vLLM >= {floor} to serve LoRA "
                           f"adapters of gpt-oss (MoE LoRA). Upgrade the server.")


def _served_path(client: Any, name: str) -> str | None:
    """The `root` (adapter path) `/v1/models` lists for `name`, if the server says."""
    try:
        response = client.get("/v1/models")
        cards = response.json().get("data", []) if response.status_code == 200 else []
    except Exception:  # a listing failure must not turn a loaded adapter into an error
        return None
    for card in cards:
        if isinstance(card, dict) and card.get("id") == name and isinstance(card.get("root"), str):
            return card["root"]
    return None


__all__ = ["VLLM_MIN_VERSION", "RemoteBackend", "api_root", "publish_adapter", "server_version",
           "stage_adapter"]
