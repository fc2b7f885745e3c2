"""`sia.toml`: which provider plays each role, and non-secret provider settings.

Looked up in order: `--config PATH`, `./sia.toml`, `$SIA_HOME/sia.toml`. Keys are
never read from it, only the *names* of the environment variables that hold them::

    [roles]
    meta = "anthropic:claude-sonnet-4-6"   # builtin | anthropic[:MODEL] | openai:MODEL
    feedback = "anthropic"
    target = "tiny"                        # the embedded model, built offline
    trainer = "local"                      # local | modal

    [providers.openai]
    base_url = "http://localhost:8000/v1"
    api_key_env = "OPENAI_API_KEY"

    [sandbox]
    kind = "process"   # bwrap (default: OS isolation) | process (weaker; where bwrap cannot run)

With no file, Meta and Feedback default to Anthropic when `ANTHROPIC_API_KEY` is set
and to the built-in policy otherwise; every fallback is said out loud.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sia.core.config import ConfigError
from sia.store.home import sia_home

ROLES = ("meta", "feedback", "target", "trainer")
LLM_ROLES = ("meta", "feedback")
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


@dataclass(frozen=True)
class Settings:
    roles: dict[str, str] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sandbox: str | None = None
    source: Path | None = None

    def provider_settings(self, name: str) -> dict[str, Any]:
        return dict(self.providers.get(name, {}))


def find_settings(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    for candidate in (Path.cwd() / "sia.toml", sia_home() / "sia.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(explicit: Path | None = None) -> Settings:
    path = find_settings(explicit)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"roles", "providers", "sandbox"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))} "
                          "(known: roles, providers, sandbox)")
    roles = data.get("roles", {})
    bad = set(roles) - set(ROLES)
    if bad:
        raise ConfigError(f"{path}: unknown role(s) {', '.join(sorted(bad))} "
                          f"(known: {', '.join(ROLES)})")
    if not all(isinstance(v, str) for v in roles.values()):
        raise ConfigError(f"{path}: every role must name a provider as a string")
    providers = data.get("providers", {})
    if not all(isinstance(v, dict) for v in providers.values()):
        raise ConfigError(f"{path}: [providers.NAME] must be tables")
    for name, table in providers.items():
        if any("key" in k.lower() and not k.endswith("_env") for k in table):
            raise ConfigError(f"{path}: [providers.{name}] holds a key; put it in the "
                              "environment and name the variable with api_key_env")
    return Settings(roles=dict(roles), providers=providers,
                    sandbox=_sandbox_kind(path, data.get("sandbox", {})), source=path)


def _sandbox_kind(path: Path, table: Any) -> str | None:
    if not isinstance(table, dict) or set(table) - {"kind"}:
        raise ConfigError(f"{path}: [sandbox] takes one key, kind = \"bwrap\" | \"process\"")
    kind = table.get("kind")
    if kind not in (None, "bwrap", "process"):
        raise ConfigError(f"{path}: [sandbox] kind must be \"bwrap\" or \"process\", not {kind!r}")
    return kind


def provider_of(role_value: str) -> tuple[str, str | None]:
    """`"anthropic:claude-sonnet-4-6"` → ("anthropic", "claude-sonnet-4-6")."""
    name, _, model = role_value.partition(":")
    return name, model or None


def role_defaults(settings: Settings, environ: dict[str, str] | None = None
                  ) -> tuple[dict[str, str], list[str]]:
    """The role settings (and the sandbox, when sia.toml names one) a new run starts from,
    and a notice for every fallback taken."""
    env = os.environ if environ is None else environ
    chosen: dict[str, str] = {}
    notices: list[str] = []
    for role in LLM_ROLES:
        wanted = settings.roles.get(role) or "anthropic"
        name, _ = provider_of(wanted)
        key_env = settings.provider_settings(name).get("api_key_env", KEY_ENV.get(name))
        if name in KEY_ENV and key_env and not env.get(key_env):
            explicit = role in settings.roles
            notices.append(f"{role}: no {key_env} in the environment, so the built-in "
                           f"policy plays this role{' instead of ' + wanted if explicit else ''} "
                           "(deterministic rules, no LLM)")
            wanted = "builtin"
        chosen[role] = wanted
    for role in ("target", "trainer"):
        if role in settings.roles:
            chosen[role] = settings.roles[role]
    if settings.sandbox:
        chosen["sandbox"] = settings.sandbox
    return chosen, notices
