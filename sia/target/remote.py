"""The remote target backend: any OpenAI-compatible completions server, e.g. vLLM
serving gpt-oss-120b with LoRA adapters selected by name.

Publishing a new adapter to a vLLM server (started with `vllm serve BASE --enable-lora
--max-lora-rank 32` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): copy the adapter folder
where the server can read it, then `publish_adapter(name, path)` (vLLM's
`POST /v1/load_lora_adapter`); requests then select it with `model=name`. sia names
adapters `sia-<adapter hash prefix>`, so a name always means the same weights.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from sia.target.local import Sample


def adapter_name(adapter_hash: str | None) -> str | None:
    return None if adapter_hash is None else f"sia-{adapter_hash[:16]}"


class RemoteBackend:
    def __init__(self, base_url: str, model: str, adapter: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 120.0) -> None:
        from openai import OpenAI

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.client = OpenAI(base_url=base_url, api_key=key or "not-needed", max_retries=2,
                             timeout=timeout)
        self.base_url, self.model, self.adapter = base_url.rstrip("/"), model, adapter
        self.name = adapter or model

    def sample(self, prompt: str, *, max_tokens: int, temperature: float, n: int, seed: int,
               stop: list[str] | None = None) -> list[Sample]:
        response = self.client.completions.create(
            model=self.adapter or self.model, prompt=prompt, max_tokens=max_tokens,
            temperature=temperature, n=n, seed=seed, stop=stop or None, logprobs=1,
            extra_body={"return_token_ids": True},
        )
        samples = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            extra: dict[str, Any] = choice.model_extra or {}
            logprobs = choice.logprobs.token_logprobs if choice.logprobs else None
            samples.append(Sample(
                text=choice.text,
                prompt_token_ids=list(extra.get("prompt_token_ids") or []),
                token_ids=list(extra.get("token_ids") or []),
                logprobs=[float(x) for x in logprobs or [] if x is not None],
                finish_reason=choice.finish_reason or "stop",
            ))
        return samples

    def publish_adapter(self, name: str, path: str) -> None:
        """Load an adapter into a running vLLM server under `name` (idempotent per name)."""
        request = urllib.request.Request(
            f"{self.base_url.removesuffix('/v1')}/v1/load_lora_adapter",
            data=json.dumps({"lora_name": name, "lora_path": path}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
