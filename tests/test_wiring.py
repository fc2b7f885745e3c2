"""Choosing a run's handlers from its recorded config: every refusal is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sia.core.events.types import RunConfig
from sia.runtime.wiring import BackendUnavailable, handlers_for
from sia.tasks.loader import BUNDLED_ROOT, load_task


@pytest.fixture
def wordcat(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_task("wordcat", cache=tmp_path / "tasks").identity()


def test_the_default_roles_are_served(wordcat, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = handlers_for(RunConfig(task="wordcat"), wordcat, home=tmp_path)
    assert sorted(registry.handlers) == ["episode", "evaluate", "feedback", "meta", "test", "train"]
    registry.close()


@pytest.mark.parametrize("changes, problem", [
    ({"target": "gpt-9"}, "unknown target 'gpt-9'"),
    ({"trainer": "slurm"}, "unknown trainer 'slurm'"),
    ({"meta": "deterministic"}, "only run together"),
    ({"trainer": "modal"}, "needs Modal credentials"),
    ({"feedback": "openai"}, "needs a model: set it as 'openai:MODEL'"),
    ({"meta": "gemini"}, "unknown LLM provider 'gemini'"),
    ({"meta": "anthropic"}, "ANTHROPIC_API_KEY"),
])
def test_unservable_configs_are_refused(wordcat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                        changes: dict[str, str], problem: str) -> None:
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BackendUnavailable, match=problem.replace("(", r"\(")):
        handlers_for(RunConfig(task="wordcat", **changes), wordcat, home=tmp_path)


def test_a_task_changed_since_the_run_recorded_it_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mytask"
    shutil.copytree(BUNDLED_ROOT / "wordcat", folder, ignore=shutil.ignore_patterns("__pycache__"))
    snapshot = load_task(str(folder), cache=tmp_path / "tasks").identity()
    description = folder / "task.toml"
    description.write_text(description.read_text().replace("a tiny offline task", "a changed task"))
    with pytest.raises(BackendUnavailable, match="changed since this run recorded it"):
        handlers_for(RunConfig(task=snapshot.name), snapshot, home=tmp_path)
