"""Redaction of secret values from everything a store records.

The second line of defence behind keeping secrets out of children by construction: the
stores pass every event payload, cache entry, snapshot and text blob through a Redactor,
so nothing recorded holds an API key whatever produced it (a harness that printed its
parent's environment, a provider error that echoed a header). It must never change the
meaning of a record beyond the secret itself, and never print a secret in its own errors:
they name the environment variable only.

A secret is the value of an environment variable that sia is told holds one (the key
variables of `sia.toml`'s providers, passed in by the caller) or whose name says it holds
one (`ANTHROPIC_API_KEY`, `HF_TOKEN`, `MODAL_TOKEN_SECRET`, ...; see SECRET_NAME).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sia.core.events.canonical import CanonicalJSONError, canonical_json

MIN_SECRET_LENGTH = 12
"""Shorter values are not treated as secrets. Provider keys are 40+ characters; short
values are placeholders (`EMPTY`, `none`, `dummy`, `sk-local`) that also occur as ordinary
words, so replacing them would shred trajectories and code while protecting nothing (a
real secret that short is guessable anyway)."""

MIN_FRAGMENT = 16
"""A tail or a truncated message can cut a secret in two: a text (or a JSON string in it)
that begins with a secret's last MIN_FRAGMENT or more characters, or ends with its first
ones, is redacted there too. Shorter fragments are left: they are longer than the public
prefixes keys share (`sk-ant-api03-` is 13 characters, `sk-proj-` 8), so text that names a
kind of key is not mistaken for one, and 15 characters of a key's random part leave it as
unguessable as ever."""

SECRET_NAME = re.compile(
    r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE
)
"""Environment variable names that hold a secret by convention, matched on `_`-separated words."""


class SecretRefused(ValueError):
    """Data that must be stored verbatim holds a secret, so it is not stored at all."""

    def __init__(self, what: str, env_name: str) -> None:
        super().__init__(f"{what} holds the value of ${env_name}; refusing to record a secret")
        self.what, self.env_name = what, env_name


def marker(env_name: str) -> str:
    return f"[redacted:{env_name}]"


class Redactor:
    """Replaces each secret value with `[redacted:ENV_NAME]`; pure once built."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        """`secrets` maps environment variable names to their values."""
        by_value: dict[str, str] = {}
        for name in sorted(secrets):
            value = secrets[name]
            if len(value) >= MIN_SECRET_LENGTH:
                by_value.setdefault(value, name)
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(by_value.items(), key=lambda item: -len(item[0]))
        # Every occurrence of a secret, whole or cut at a text's edge, raw or JSON-escaped,
        # holds its first or last MIN_FRAGMENT characters: the quick scan looks for those.
        needles: dict[str, str] = {}
        for value, name in self._secrets:
            escaped = json.dumps(value, ensure_ascii=False)[1:-1]
            for form in (value, escaped):
                needles.setdefault(form[:MIN_FRAGMENT], name)
                needles.setdefault(form[-MIN_FRAGMENT:], name)
        self._needles = list(needles.items())
        self._bytes_forms = [(v.encode("utf-8"), n) for v, n in self._secrets]

    @classmethod
    def none(cls) -> Redactor:
        return cls({})

    @property
    def names(self) -> list[str]:
        """The variables whose values are redacted (never the values)."""
        return sorted({name for _, name in self._secrets})

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def find(self, text: str) -> str | None:
        """The name of a secret that may occur in `text` (whole, cut, or JSON-escaped).

        A hint, not a proof: it also names a secret whose first or last characters occur
        mid-text, where no cut left them; `redact` then finds nothing to replace there.
        """
        for needle, name in self._needles:
            if needle in text:
                return name
        return None

    def holds(self, text: str) -> str | None:
        """The name of a secret that does occur in `text`: whole, or cut at the edge of the
        text or of a JSON string in it. Precise where `find` is quick; for refusals."""
        if self.find(text) is None:
            return None
        for value, name in self._secrets:
            for form in {value, json.dumps(value, ensure_ascii=False)[1:-1]}:
                if form in text:
                    return name
                for size in range(MIN_FRAGMENT, len(form)):
                    head, tail = form[:size], form[-size:]
                    if (text.endswith(head) or text.startswith(tail)
                            or f'{head}"' in text or f'"{tail}' in text):
                        return name
        return None

    def holds_bytes(self, data: bytes) -> str | None:
        """`holds` for bytes: a whole secret anywhere, or, in UTF-8 text, a cut one."""
        for value, name in self._bytes_forms:
            if value in data:
                return name
        try:
            return self.holds(data.decode("utf-8"))
        except UnicodeDecodeError:
            return None

    def redact(self, text: str) -> str:
        """Replace every whole occurrence, and a fragment cut at either end of `text`."""
        if self.find(text) is None:
            return text
        for value, name in self._secrets:
            if value in text:
                text = text.replace(value, marker(name))
        for value, name in self._secrets:
            text = _redact_edges(text, value, marker(name))
        return text

    def redact_document(self, text: str) -> str:
        """Redact text, string by string when it is a JSON document, keeping it valid JSON.

        Replacing inside JSON text could split an escape sequence (a secret starting with
        `n` after a backslash), miss a secret stored escaped, or miss one cut at the end of
        a string value, so a document that may hold a secret is decoded, redacted string by
        string and re-encoded canonically. Documents without one (nearly all) are returned
        as they are, after a substring scan.
        """
        if self.find(text) is None:
            return text
        try:
            value = json.loads(text)
            return canonical_json(self.redact_data(value))
        except (ValueError, CanonicalJSONError):
            return self.redact(text)

    def redact_data(self, value: Any) -> Any:
        """A JSON-like value with every string (keys included) redacted."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list | tuple):
            return [self.redact_data(item) for item in value]
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_data(v) for k, v in value.items()}
        return value

    def refuse(self, what: str, data: bytes) -> None:
        """Raise SecretRefused if `data`, which must be stored verbatim, holds a secret."""
        name = self.holds_bytes(data)
        if name is not None:
            raise SecretRefused(what, name)


def _redact_edges(text: str, secret: str, replacement: str) -> str:
    """Replace the longest piece of `secret` cut off at the start or the end of `text`."""
    for size in range(min(len(secret) - 1, len(text)), MIN_FRAGMENT - 1, -1):
        if text.startswith(secret[-size:]):
            text = replacement + text[size:]
            break
    for size in range(min(len(secret) - 1, len(text)), MIN_FRAGMENT - 1, -1):
        if text.endswith(secret[:size]):
            text = text[:-size] + replacement
            break
    return text


def secret_names(environ: Mapping[str, str], configured: Iterable[str] = ()) -> set[str]:
    """Variables treated as secrets: the configured ones plus those whose name says so."""
    return {name for name in environ if SECRET_NAME.search(name)} | set(configured)


def redactor_from_environment(configured: Iterable[str] = (),
                              environ: Mapping[str, str] | None = None) -> Redactor:
    """A Redactor for the secrets present in the environment (the process's by default)."""
    env = os.environ if environ is None else environ
    return Redactor({name: env[name] for name in secret_names(env, configured) if env.get(name)})


def configured_key_names(providers: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The `api_key_env` names of `sia.toml`'s `[providers.*]` tables."""
    return {str(table["api_key_env"]) for table in providers.values()
            if isinstance(table, Mapping) and table.get("api_key_env")}
