"""A loopback stand-in for a vLLM OpenAI-compatible server with runtime LoRA loading, on a real model.

It speaks the parts of vLLM's protocol sia uses, as vLLM does (checked against
vllm-project/vllm `vllm/entrypoints/openai/completion/protocol.py`, `.../models/serving.py`
and `api_server.py`):

* `POST /v1/completions` — `prompt` a string or a list of strings; `n`, `max_tokens`
  (default 16), `temperature`, `top_p`, `seed`, `stop`, `logprobs`, `return_token_ids`;
  other fields are accepted and ignored. Choices are numbered prompt-major
  (`index` = prompt_i * n + j) and carry `text`, `finish_reason`, `stop_reason` (None
  for EOS, the stop token id or stop string otherwise), `logprobs` {`tokens`,
  `token_logprobs`, `top_logprobs`, `text_offset`} and, with `return_token_ids`,
  `prompt_token_ids` and `token_ids`. Like vLLM, a sample that ended on EOS has the EOS
  id (and its log-probability) as its last token while the text leaves it out. An
  unknown model is a 404 `NotFoundError`.
* `POST /v1/chat/completions` — `messages` rendered with the model's own chat template
  (`tokenizer.apply_chat_template`, generation prompt added, no extra special tokens, as
  vLLM's chat endpoint does), then sampled as above; `max_completion_tokens` or
  `max_tokens`, `logprobs` (bool), `return_token_ids`. A choice carries
  `message.content`, `logprobs.content[].logprob`, `finish_reason`, `stop_reason` and
  `token_ids`; the response carries `prompt_token_ids`
  (`ChatCompletionResponse` in `vllm/entrypoints/openai/chat_completion/protocol.py`). A
  model without a chat template is a 400 with vLLM's (transformers') wording.
* End of sequence, as vLLM takes it from the model: the tokenizer's EOS ends a sample with
  `stop_reason` None; the other `eos_token_id`s of `generation_config.json` (and
  `config.json`) are stop token ids, and end a sample with `stop_reason` set to the id.
* `GET /v1/models` — the base model, then each loaded adapter with `root` (its path) and
  `parent` (the base).
* `GET /version` — `{"version": ...}` (`version=` at construction; None: no such route,
  as on OpenAI-compatible servers that are not vLLM).
* `POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace?}` — 200 with a plain
  success string (sent here as a JSON string); 400 "has already been loaded" for a known
  name unless `load_inplace`; 404 when the path holds no adapter.
* `POST /v1/unload_lora_adapter {lora_name}` — 404 "cannot be found" for an unknown name.

Errors have vLLM's current shape `{"error": {"message", "type", "param", "code"}}` (an
unknown model or adapter: 404 "The model `x` does not exist.", `param` "model", as
`_check_model` in `vllm/entrypoints/openai/engine/serving.py` answers); a
route the server does not have (e.g. LoRA loading without `VLLM_ALLOW_RUNTIME_LORA_UPDATING`,
here `runtime_lora_updating=False`) is FastAPI's 404 `{"detail": "Not Found"}`.

`restart()` does what restarting the vLLM process does to its state: adapters loaded at
runtime are gone (vLLM keeps them in memory only), those given at startup
(`lora_modules`, like `--lora-modules name=path`) are loaded again.

The base model is `sia.target.local.LocalBackend(model_dir)` behind `SamplerBackend`; each
loaded adapter is `LocalBackend(model_dir, lora_path)`, which applies temperature and
`top_p` as it does locally. With `return_token_ids_supported=False` the server acts like
vLLM < 0.10.2: it ignores `return_token_ids` and sends no token ids.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from sia.harness.backends import Completion, SamplerBackend, SamplingParams
from sia.testing.loopback import JSON, Fault, LoopbackServer, ProtocolError, RecordedRequest, Route

_NOT_FOUND = "NotFoundError"
_BAD = "BadRequestError"
MAX_MODEL_LEN = 128
NO_CHAT_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must "
                    "provide a chat template if the tokenizer does not define one.")
"""vLLM's 400 for a chat request to a model whose tokenizer has no chat template."""


def config_stop_ids(model_dir: Path) -> set[int]:
    """Every `eos_token_id` of the model's `config.json` and `generation_config.json`."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            ids.update([value] if isinstance(value, int) else [int(v) for v in value or []])
    return ids


class VLLMServer(LoopbackServer):
    """`with VLLMServer(model_dir, served_name="base") as srv:` then `RemoteBackend(srv.base_url, "base")`."""

    def __init__(self, model_dir: Path, *, served_name: str, api_key: str | None = None,
                 return_token_ids_supported: bool = True, runtime_lora_updating: bool = True,
                 lora_modules: dict[str, Path] | None = None, version: str | None = "0.12.0") -> None:
        super().__init__()
        from sia.target.local import LocalBackend

        self.model_dir = Path(model_dir)
        self.served_name = served_name
        self.api_key = api_key
        self.return_token_ids_supported = return_token_ids_supported
        self.runtime_lora_updating = runtime_lora_updating
        self.responder = lambda request: None  # unused: answers come from the model
        self.lora_modules = {name: str(path) for name, path in (lora_modules or {}).items()}
        self.version = version
        self._base = LocalBackend(self.model_dir)
        self._eos = self._base.tokenizer.eos_token_id
        self._stop_ids = config_stop_ids(self.model_dir) - {self._eos}
        self._adapters: dict[str, tuple[str, LocalBackend]] = {}
        self._adapters_lock = threading.Lock()
        self._count = 0
        self.restart()

    def restart(self) -> None:
        """Lose every runtime-loaded adapter and load the startup ones again, as a restarted vLLM."""
        from sia.target.local import LocalBackend

        with self._adapters_lock:
            self._adapters = {name: (path, LocalBackend(self.model_dir, Path(path)))
                              for name, path in self.lora_modules.items()}

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapter name -> path."""
        with self._adapters_lock:
            return {name: path for name, (path, _) in self._adapters.items()}

    @property
    def completion_requests(self) -> list[JSON]:
        return [r.body for r in self.requests if r.path.startswith("/v1/completions") and r.body]

    @property
    def chat_requests(self) -> list[JSON]:
        return [r.body for r in self.requests if r.path.startswith("/v1/chat/completions") and r.body]

    def routes(self) -> dict[tuple[str, str], Route]:
        routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._models,
        }
        if self.version is not None:
            routes[("GET", "/version")] = lambda request: (200, {}, {"version": self.version})
        if self.runtime_lora_updating:
            routes[("POST", "/v1/load_lora_adapter")] = self._load
            routes[("POST", "/v1/unload_lora_adapter")] = self._unload
        return routes

    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]:
        if status == 404 and error_type is None and message.startswith("no route"):
            return {}, {"detail": "Not Found"}  # FastAPI's answer for a route it lacks
        kind = error_type or (_NOT_FOUND if status == 404 else
                              "InternalServerError" if status >= 500 else _BAD)
        return {}, {"error": {"message": message, "type": kind, "param": None, "code": status}}

    # -- routes

    def _check_auth(self, request: RecordedRequest) -> None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise ProtocolError(401, "Unauthorized", "Unauthorized")

    def _models(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        self._check_auth(request)
        created = int(time.time())
        data = [{"id": self.served_name, "object": "model", "created": created, "owned_by": "vllm",
                 "root": str(self.model_dir), "parent": None, "max_model_len": MAX_MODEL_LEN}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "vllm",
                  "root": path, "parent": self.served_name}
                 for name, path in self.adapters.items()]
        return 200, {}, {"object": "list", "data": data}

    def _load(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        from sia.target.local import LocalBackend

        self._check_auth(request)
        body = request.body if isinstance(request.body, dict) else {}
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            raise ProtocolError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        with self._adapters_lock:
            if name in self._adapters and not body.get("load_inplace"):
                raise ProtocolError(400, f"The lora adapter '{name}' has already been loaded. If you want "
                                         f"to load the adapter in place, set 'load_inplace' to True.",
                                    "InvalidUserInput")
            if not (Path(path) / "adapter_config.json").is_file():
                raise ProtocolError(404, f"Loading lora {name} failed: No adapter found for {path}",
                                    _NOT_FOUND)
            self._adapters[name] = (path, LocalBackend(self.model_dir, Path(path)))
        return 200, {}, f"Success: LoRA adapter '{name}' added successfully."  # type: ignore[return-value]

    def _unload(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        self._check_auth(request)
        body = request.body if isinstance(request.body, dict) else {}
        name = body.get("lora_name")
        if not name:
            raise ProtocolError(400, "'lora_name' needs to be provided to unload a LoRA adapter.",
                                "InvalidUserInput")
        with self._adapters_lock:
            if name not in self._adapters:
                raise ProtocolError(404, f"The lora adapter '{name}' cannot be found.", _NOT_FOUND)
            del self._adapters[name]
        return 200, {}, f"Success: LoRA adapter '{name}' removed successfully."  # type: ignore[return-value]

    def _backend(self, model: Any) -> Any:
        if model is None or model == self.served_name:
            return self._base
        with self._adapters_lock:
            loaded = self._adapters.get(model)
        if loaded is None:
            raise ProtocolError(404, f"The model `{model}` does not exist.", _NOT_FOUND, param="model")
        return loaded[1]

    def _generation_request(self, request: RecordedRequest) -> tuple[dict[str, Any], Any]:
        """The checked body of a completions or chat request, and the backend it names."""
        self._check_auth(request)
        body = request.body
        if not isinstance(body, dict):
            raise ProtocolError(400, "the request body must be a JSON object")
        if body.get("stream"):
            raise ProtocolError(400, "this stand-in answers non-streaming requests only")
        return body, self._backend(body.get("model"))

    def _completions(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        body, backend = self._generation_request(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p for p in prompts)):
            raise ProtocolError(400, "Either prompt or prompt_embeds must be provided and non-empty "
                                     "(this stand-in takes text prompts only).")
        params = self._params(body)
        logprobs = body.get("logprobs")
        with_ids = bool(body.get("return_token_ids")) and self.return_token_ids_supported
        generations = SamplerBackend(backend).generate(prompts, params)
        choices: list[JSON] = []
        prompt_tokens = completion_tokens = 0
        for index, generation in enumerate(generations):
            if index % params.n == 0:
                prompt_tokens += len(generation.prompt_token_ids)
            ids, lps, text, reason, stop_reason = self._as_vllm(backend, generation, params)
            completion_tokens += len(ids)
            choice: JSON = {"index": index, "text": text,
                            "logprobs": None if logprobs is None else self._logprobs(backend, ids, lps),
                            "finish_reason": reason, "stop_reason": stop_reason,
                            "prompt_logprobs": None}
            if with_ids:
                choice["prompt_token_ids"] = list(generation.prompt_token_ids)
                choice["token_ids"] = ids
            choices.append(choice)
        self._count += 1
        return 200, {}, {
            "id": f"cmpl-loopback-{self._count:06d}", "object": "text_completion",
            "created": int(time.time()), "model": body.get("model") or self.served_name,
            "choices": choices, "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                      "completion_tokens": completion_tokens, "prompt_tokens_details": None},
            "kv_transfer_params": None,
        }

    def _chat(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        body, backend = self._generation_request(request)
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
            raise ProtocolError(400, "messages must be a non-empty list of {role, content: str} objects "
                                     "(this stand-in takes text content only)")
        tokenizer = backend.tokenizer
        if not tokenizer.chat_template:
            raise ProtocolError(400, NO_CHAT_TEMPLATE)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        rest = MAX_MODEL_LEN - len(prompt_ids)
        params = self._params({**body, "max_tokens": rest if limit is None else limit, "logprobs": None})
        with_ids = bool(body.get("return_token_ids")) and self.return_token_ids_supported
        choices: list[JSON] = []
        completion_tokens = 0
        for index, generation in enumerate(SamplerBackend(backend).generate([prompt], params)):
            if list(generation.prompt_token_ids) != prompt_ids:
                raise ProtocolError(500, "the stand-in's model tokenized the chat prompt differently")
            ids, lps, text, reason, stop_reason = self._as_vllm(backend, generation, params)
            completion_tokens += len(ids)
            tokens = tokenizer.convert_ids_to_tokens(ids)
            choice: JSON = {
                "index": index, "message": {"role": "assistant", "content": text, "refusal": None,
                                            "annotations": None, "audio": None, "function_call": None,
                                            "reasoning": None},
                "logprobs": {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                                          "top_logprobs": []} for t, lp in zip(tokens, lps, strict=True)]}
                if body.get("logprobs") else None,
                "finish_reason": reason, "stop_reason": stop_reason}
            if with_ids:
                choice["token_ids"] = ids
            choices.append(choice)
        self._count += 1
        response: JSON = {
            "id": f"chatcmpl-loopback-{self._count:06d}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model") or self.served_name,
            "choices": choices, "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(prompt_ids) + completion_tokens, "prompt_tokens_details": None},
            "prompt_logprobs": None, "kv_transfer_params": None}
        if with_ids:
            response["prompt_token_ids"] = prompt_ids
        return 200, {}, response

    @staticmethod
    def _params(body: JSON) -> SamplingParams:
        def number(name: str, default: float) -> float:
            value = body.get(name)
            if value is None:
                return default
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ProtocolError(400, f"`{name}` must be a number.")
            return float(value)

        max_tokens, n, seed = body.get("max_tokens"), body.get("n"), body.get("seed")
        max_tokens = 16 if max_tokens is None else max_tokens
        n = 1 if n is None else n
        for name, value in (("max_tokens", max_tokens), ("n", n)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError(400, f"{name} must be at least 1, got {value}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ProtocolError(400, "`seed` must be an integer.")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ProtocolError(400, "`stop` must be a string or a list of strings.")
        temperature, top_p = number("temperature", 1.0), number("top_p", 1.0)
        if temperature < 0 or not 0 < top_p <= 1:
            raise ProtocolError(400, "temperature must be non-negative and top_p in (0, 1].")
        return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n,
                              stop=tuple(stop),
                              seed=random.randrange(2**31) if seed is None else seed)

    def _as_vllm(self, backend: Any, generation: Completion,
                 params: SamplingParams) -> tuple[list[int], list[float], str, str, int | str | None]:
        """vLLM's view of a local sample: `(token_ids, logprobs, text, finish_reason, stop_reason)`.

        An EOS ending is kept as the last token; a stop token id from the model's config
        (which the local backend does not know) ends the sample there, kept likewise.
        """
        ids = list(generation.token_ids)
        lps = list(generation.logprobs or [0.0] * len(ids))
        tokenizer = backend.tokenizer
        cut = next((k for k, token in enumerate(ids) if token in self._stop_ids), None)
        if cut is not None:
            return (ids[: cut + 1], lps[: cut + 1], tokenizer.decode(ids[:cut], skip_special_tokens=True),
                    "stop", ids[cut])
        if generation.finish_reason != "stop":
            return ids, lps, generation.text, generation.finish_reason, None
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if generation.text != full:  # cut by a stop string
            marks = [m for m in params.stop if m and full.find(m) == len(generation.text)]
            return ids, lps, generation.text, "stop", marks[0] if marks else params.stop[0]
        eos_lp = _eos_logprob(backend, generation, params.temperature)
        return [*ids, self._eos], [*lps, eos_lp], generation.text, "stop", None

    @staticmethod
    def _logprobs(backend: Any, ids: list[int], lps: list[float]) -> JSON:
        tokens = backend.tokenizer.convert_ids_to_tokens(ids)
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens,
                "top_logprobs": [{token: lp} for token, lp in zip(tokens, lps, strict=True)]}


def _eos_logprob(backend: Any, generation: Completion, temperature: float) -> float:
    """The log-probability the sampling distribution gave EOS after the sample."""
    torch = backend.torch
    ids = torch.tensor([[*generation.prompt_token_ids, *generation.token_ids]])
    with backend._lock, torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0, -1, :].float()
    if temperature > 0:
        logits = logits / temperature
    return round(float(torch.log_softmax(logits, dim=-1)[backend.tokenizer.eos_token_id]), 6)


__all__ = ["Fault", "VLLMServer"]
