"""The remote target backend: an OpenAI-compatible server (in practice vLLM) serving LoRA adapters by name.

A weight-training run samples the target on a GPU box, e.g.

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve openai/gpt-oss-120b --enable-lora ...

and publishes each trained adapter to it by name (`publish_adapter`), then reaches it
through `RemoteBackend(base_url, model, adapter=name)`. Training learns from the exact
tokens sampled, so `generate` asks vLLM for them (`return_token_ids`, vLLM >= 0.10.2,
returned per choice as `prompt_token_ids` and `token_ids`) and refuses a server that
does not send them: re-tokenizing the text would train on tokens never sampled.

Conventions kept identical to the local backend (`sia.target.local`):

* `Generation.token_ids` excludes the token that ended the sample. vLLM includes it
  (the EOS, or a `stop_token_ids` token, with `stop_reason` None or that id); it is
  dropped here with its log-probability, and the trainer appends the EOS again for a
  "stop" finish. A stop *string* (`stop_reason` a str) keeps every token, as locally.
* Choices are prompt-major: vLLM numbers choice `index` = prompt_i * n + j.
* Log-probabilities: the local backend reports those of the sampling distribution
  (after temperature); vLLM does so with `--logprobs-mode processed_logprobs` (its
  default, `raw_logprobs`, reports the model's distribution before temperature).
* Every sampling parameter is sent explicitly, so the model's `generation_config.json`
  defaults, which vLLM applies to fields left out, never change what was asked.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from sia.harness.backends import Generation, SamplingParams

TOKEN_IDS_REQUIRED = (
    "the server at {url} returned no token ids for model {model!r}: weight training needs the "
    "exact sampled tokens. Serve the target with vLLM >= 0.10.2, which returns `prompt_token_ids` "
    "and `token_ids` per choice when a completion asks for `return_token_ids`."
)


def api_root(base_url: str) -> str:
    """`http://host:8000` from `http://host:8000`, `http://host:8000/` or `http://host:8000/v1`."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _api_key(api_key_env: str | None) -> str | None:
    return os.environ.get(api_key_env) or None if api_key_env else None


class RemoteBackend:
    """A `TargetBackend` over `POST /v1/completions` of a vLLM server.

    `model` is the served base model name (`--served-model-name`, or the model path);
    with `adapter`, calls go to that LoRA adapter, which must have been loaded (at startup
    with `--lora-modules name=path`, or at runtime with `publish_adapter`). The API key,
    if the server wants one (`vllm serve --api-key`), is read from `api_key_env`.
    """

    def __init__(self, base_url: str, model: str, *, adapter: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 600.0) -> None:
        if not model:
            raise ValueError("model must name the served base model")
        self.base_url = api_root(base_url)
        self.model = model
        self.adapter = adapter
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.name = adapter or model
        self._client: Any = None
        self._lock = threading.Lock()

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(base_url=self.base_url + "/v1",
                                             api_key=_api_key(self.api_key_env) or "EMPTY",
                                             max_retries=2, timeout=self.timeout)
            return self._client

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        import openai

        if not prompts:
            return []
        served = self.adapter or self.model
        request: dict[str, Any] = dict(
            model=served, prompt=prompts, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, n=params.n, seed=params.seed,
            logprobs=1, extra_body={"return_token_ids": True})
        if params.stop:
            request["stop"] = list(params.stop)
        try:
            response = self._openai().completions.create(**request)
        except openai.NotFoundError as exc:
            hint = (f"publish it first (sia.target.remote.publish_adapter) or start vLLM with "
                    f"--lora-modules {served}=PATH" if self.adapter else
                    "check the server's --served-model-name")
            raise RuntimeError(f"{self.base_url} does not serve model {served!r} "
                               f"({_message(exc)}); {hint}") from exc
        except openai.AuthenticationError as exc:
            raise RuntimeError(f"{self.base_url} refused the API key "
                               f"(from ${self.api_key_env}): {_message(exc)}") from exc
        except openai.APIConnectionError as exc:
            raise RuntimeError(f"cannot reach the target server at {self.base_url}: {exc}") from exc
        choices = sorted(response.choices, key=lambda choice: choice.index)
        expected = len(prompts) * params.n
        if len(choices) != expected or [c.index for c in choices] != list(range(expected)):
            raise RuntimeError(f"{self.base_url} returned choices {[c.index for c in choices]} "
                               f"for {len(prompts)} prompt(s) x n={params.n}")
        return [self._generation(choice, served) for choice in choices]

    def _generation(self, choice: Any, served: str) -> Generation:
        extra = dict(choice.model_extra or {})
        prompt_ids, ids = extra.get("prompt_token_ids"), extra.get("token_ids")
        if prompt_ids is None or ids is None:
            raise RuntimeError(TOKEN_IDS_REQUIRED.format(url=self.base_url, model=served))
        ids = [int(token) for token in ids]
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
            logprobs = [float(p) if p is not None else 0.0 for p in choice.logprobs.token_logprobs]
            if len(logprobs) != len(ids):
                raise RuntimeError(f"{self.base_url} returned {len(logprobs)} logprobs for "
                                   f"{len(ids)} tokens")
        reason = choice.finish_reason
        if reason not in ("stop", "length"):
            raise RuntimeError(f"{self.base_url} ended a completion with finish_reason {reason!r}")
        if reason == "stop" and not isinstance(extra.get("stop_reason"), str) and ids:
            ids = ids[:-1]  # the EOS / stop token: sia's token_ids exclude it (see module doc)
            logprobs = None if logprobs is None else logprobs[:-1]
        return Generation(text=choice.text or "", prompt_token_ids=[int(t) for t in prompt_ids],
                          token_ids=ids, logprobs=logprobs, finish_reason=reason)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        text = inner.get("message") or inner.get("detail")
        if text:
            return str(text)
    return str(exc)


def _body_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        for key in ("message", "detail"):
            if inner.get(key):
                return str(inner[key])
    return str(body)[:500]


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


__all__ = ["RemoteBackend", "api_root", "publish_adapter", "stage_adapter"]
