"""sia.toml: roles, provider settings, and the say-so fallback to the built-in policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sia.core.config import ConfigError
from sia.runtime.settings import Settings, load_settings, provider_of, role_defaults


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sia.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_roles_and_providers_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[roles]\nmeta = "openai:qwen"\ntrainer = "modal"\n'
                           '[providers.openai]\nbase_url = "http://127.0.0.1:9/v1"\n'
                           'api_key_env = "MY_KEY"\n')
    settings = load_settings(path)
    assert settings.roles == {"meta": "openai:qwen", "trainer": "modal"}
    assert settings.provider_settings("openai") == {"base_url": "http://127.0.0.1:9/v1",
                                                    "api_key_env": "MY_KEY"}
    chosen, notices = role_defaults(settings, {"MY_KEY": "x"})
    assert chosen["meta"] == "openai:qwen" and chosen["trainer"] == "modal"
    assert chosen["feedback"] == "builtin" and "ANTHROPIC_API_KEY" in notices[0]


def test_without_keys_the_llm_roles_fall_back_to_builtin_and_say_so() -> None:
    chosen, notices = role_defaults(Settings(), {})
    assert chosen == {"meta": "builtin", "feedback": "builtin"}
    assert len(notices) == 2 and all("built-in policy" in n for n in notices)
    chosen, notices = role_defaults(Settings(), {"ANTHROPIC_API_KEY": "k"})
    assert chosen == {"meta": "anthropic", "feedback": "anthropic"} and notices == []


def test_an_explicit_builtin_role_needs_no_key() -> None:
    chosen, notices = role_defaults(Settings(roles={"meta": "builtin", "feedback": "builtin"}), {})
    assert chosen == {"meta": "builtin", "feedback": "builtin"} and notices == []


@pytest.mark.parametrize("text, problem", [
    ("[roles\n", "not valid TOML"),
    ('[roles]\nplanner = "x"\n', "unknown role(s) planner"),
    ('[roles]\nmeta = 3\n', "must name a provider"),
    ('[extras]\n', "unknown section(s) extras"),
    ('[providers.anthropic]\napi_key = "sk-secret"\n', "holds a key"),
])
def test_bad_settings_files_are_clear_errors(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, text))


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_provider_of_splits_the_model() -> None:
    assert provider_of("anthropic:claude-sonnet-4-6") == ("anthropic", "claude-sonnet-4-6")
    assert provider_of("builtin") == ("builtin", None)
