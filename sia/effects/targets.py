"""The target model as the harness sees it: one model gateway per adapter.

Models load lazily, on the first episode that needs them, so a run that only resumes
pending feedback never pays for torch. Episodes of one generation share the gateway of
their adapter; a new adapter gets a new backend and gateway, and the registry's
`close()` shuts them all down. Where the model runs is the target's business:

* `tiny` — the embedded model, in this process (transformers + peft);
* `vllm:MODEL` — a remote vLLM server; each adapter is published to it by name first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sia.harness.backends import TargetBackend
from sia.harness.gateway import ModelGateway
from sia.store.blobs import BlobStore

BackendFactory = Callable[[str | None, Path | None], TargetBackend]
"""(adapter hash, its files on disk) → a backend serving the base model plus that adapter."""


def local_backend(model_dir: Callable[[], Path]) -> BackendFactory:
    def make(adapter_hash: str | None, adapter_dir: Path | None) -> TargetBackend:
        from sia.harness.backends import SamplerBackend
        from sia.target.local import LocalBackend

        return SamplerBackend(LocalBackend(model_dir(), adapter_dir))

    return make


def vllm_backend(model: str, settings: dict[str, Any]) -> BackendFactory:
    base_url = settings["base_url"]
    shared_root = Path(settings["shared_root"]) if settings.get("shared_root") else None
    key_env = settings.get("api_key_env", "OPENAI_API_KEY")

    def make(adapter_hash: str | None, adapter_dir: Path | None) -> TargetBackend:
        from sia.target.remote import RemoteBackend, publish_adapter

        name = None
        if adapter_hash and adapter_dir:
            name = publish_adapter(base_url, f"sia-{adapter_hash[:16]}", adapter_dir,
                                   shared_root=shared_root, api_key_env=key_env)
        return RemoteBackend(base_url, model, adapter=name, api_key_env=key_env,
                             adapter_dir=adapter_dir if name else None, shared_root=shared_root)

    return make


def adapter_dir(blobs: BlobStore, adapter_hash: str | None, root: Path) -> Path | None:
    """An adapter's files at a stable path (`root/<hash>/`), written once from the blobs."""
    if adapter_hash is None:
        return None
    from sia.train.job import load_adapter

    return load_adapter(blobs, adapter_hash, root / adapter_hash)


class TargetPool:
    def __init__(self, backend: BackendFactory, adapters_root: Path) -> None:
        self._backend = backend
        self._adapters_root = adapters_root
        self._gateways: dict[str | None, ModelGateway] = {}
        self._lock = threading.Lock()

    def gateway(self, adapter_hash: str | None, blobs: BlobStore) -> ModelGateway:
        with self._lock:
            gateway = self._gateways.get(adapter_hash)
            if gateway is None:
                adapter = adapter_dir(blobs, adapter_hash, self._adapters_root)
                gateway = self._gateways[adapter_hash] = ModelGateway(self._backend(adapter_hash, adapter))
            return gateway

    def close(self) -> None:
        with self._lock:
            gateways, self._gateways = list(self._gateways.values()), {}
        for gateway in gateways:
            gateway.close()
