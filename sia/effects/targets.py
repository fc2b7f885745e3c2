"""The target model as the harness sees it: one model gateway per adapter.

Models load lazily, on the first episode that needs them, so a run that only resumes
pending feedback never pays for torch. Episodes of one generation share the gateway of
their adapter; a new adapter gets a new backend and gateway, and the registry's
`close()` shuts them all down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sia.harness.gateway import ModelGateway
from sia.store.blobs import BlobStore


class TargetPool:
    def __init__(self, model_dir: Callable[[], Path], adapters_root: Path) -> None:
        self._model_dir = model_dir
        self._adapters_root = adapters_root
        self._gateways: dict[str | None, ModelGateway] = {}
        self._lock = threading.Lock()

    def model_dir(self) -> Path:
        return self._model_dir()

    def gateway(self, adapter_hash: str | None, blobs: BlobStore) -> ModelGateway:
        with self._lock:
            gateway = self._gateways.get(adapter_hash)
            if gateway is None:
                from sia.harness.backends import SamplerBackend
                from sia.target.local import LocalBackend

                from sia.train.job import load_adapter

                adapter = (load_adapter(blobs, adapter_hash, self._adapters_root / adapter_hash)
                           if adapter_hash else None)
                backend = SamplerBackend(LocalBackend(self._model_dir(), adapter))
                gateway = self._gateways[adapter_hash] = ModelGateway(backend)
            return gateway

    def close(self) -> None:
        with self._lock:
            gateways, self._gateways = list(self._gateways.values()), {}
        for gateway in gateways:
            gateway.close()
