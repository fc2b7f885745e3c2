from __future__ import annotations

from pathlib import Path

import pytest

from sia.effects.deterministic import deterministic_registry, toy_task
from sia.core.events.types import RunConfig
from sia.runtime.loop import Runtime
from sia.store.memory import MemoryEventStore

TOY = dict(task="toy", meta="deterministic", feedback="deterministic",
           target="deterministic", trainer="deterministic")


def toy_config(**changes: object) -> RunConfig:
    return RunConfig(**{**TOY, **changes})  # type: ignore[arg-type]


@pytest.fixture
def memory_runtime(tmp_path: Path) -> Runtime:
    return Runtime(MemoryEventStore(), deterministic_registry(), home=tmp_path, concurrency=2)


def toy_run(runtime: Runtime, **changes: object) -> str:
    run_id = runtime.create(toy_config(**changes), toy_task())
    runtime.drive(run_id)
    return run_id


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "sia-home"
    monkeypatch.setenv("SIA_HOME", str(home))
    monkeypatch.delenv("SIA_CRASH_AT", raising=False)
    monkeypatch.delenv("SIA_EFFECT_COUNTER", raising=False)
    return home
