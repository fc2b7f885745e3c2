"""Choosing the sandbox: bwrap by default, the weaker process sandbox only when sia.toml or
`--set sandbox=process` says so, bad values refused, older logs still read as bwrap runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sia.core.config import ConfigError, apply_overrides
from sia.core.events.types import RunConfig
from sia.harness.bwrap import FIX, unavailable_reason
from sia.runtime.settings import load_settings, role_defaults
from sia.runtime.wiring import require_sandbox


def test_bwrap_is_the_default_and_a_config_recorded_before_the_field_reads_as_bwrap() -> None:
    assert RunConfig(task="t").sandbox == "bwrap"
    assert RunConfig.model_validate({"task": "t", "mode": "H"}).sandbox == "bwrap"


def test_the_process_sandbox_is_chosen_by_override_and_bad_values_are_refused() -> None:
    assert apply_overrides(RunConfig(task="t"), {"sandbox": "process"}).sandbox == "process"
    with pytest.raises(ConfigError, match="sandbox"):
        apply_overrides(RunConfig(task="t"), {"sandbox": "chroot"})


def test_sia_toml_can_choose_the_sandbox(tmp_path: Path) -> None:
    path = tmp_path / "sia.toml"
    path.write_text('[sandbox]\nkind = "process"\n', encoding="utf-8")
    chosen, _ = role_defaults(load_settings(path), {})
    assert chosen["sandbox"] == "process"
    path.write_text('[sandbox]\nkind = "docker"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="kind must be"):
        load_settings(path)
    path.write_text('[sandbox]\nmode = "process"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="one key"):
        load_settings(path)
    path.write_text("", encoding="utf-8")
    assert "sandbox" not in role_defaults(load_settings(path), {})[0]


def test_this_machine_can_isolate_and_the_fix_names_every_way_out() -> None:
    assert unavailable_reason() is None
    require_sandbox(RunConfig(task="t"))
    require_sandbox(RunConfig(task="t", sandbox="process"))
    assert "apt-get install bubblewrap" in FIX and "--set sandbox=process" in FIX and "\n" not in FIX


def test_an_episode_on_a_machine_without_bwrap_raises_before_starting_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sia.harness import bwrap
    from sia.harness.sandbox import run_episode

    monkeypatch.setattr(bwrap, "bwrap_path", lambda: None)
    bwrap.unavailable_reason.cache_clear()
    try:
        with pytest.raises(bwrap.SandboxUnavailable, match="not installed.*apt-get install"):
            run_episode("def solve(sample, model):\n    return 'x'\n", {}, model_socket=None)
        assert run_episode("def solve(sample, model):\n    return 'x'\n", {}, model_socket=None,
                           isolation="process").answer == "x"
    finally:
        bwrap.unavailable_reason.cache_clear()
