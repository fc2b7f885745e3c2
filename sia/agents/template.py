"""The template harness: a generic `solve` whose behaviour is set by a few knobs.

The built-in policy edits harnesses only by changing these knobs (the constants at the
top of the rendered module), so every edit it makes is small, named and diffable. LLM
agents may write any harness; this one is the offline default and a starting point.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, replace

KNOB_NAMES = ("PROMPT", "EXTRACT", "SAMPLES", "TEMPERATURE", "MAX_TOKENS", "FALLBACK")


@dataclass(frozen=True)
class Knobs:
    prompt: str = "fields"
    """How the prompt is laid out: "fields" = one `key: value` line per input field, the
    options and an `answer:` cue; "bare" = the question text alone."""
    extract: str = "raw"
    """raw = the completion as is; first_line; option = the first listed option it names."""
    samples: int = 1
    """Completions per sample; more than one → majority vote over extracted answers."""
    temperature: float = 1.0
    max_tokens: int = 4
    fallback: str = "none"
    """none = leave unanswered; first_option = answer the first option when nothing parses."""

    def with_(self, **changes: object) -> Knobs:
        return replace(self, **changes)  # type: ignore[arg-type]


TEMPLATE = '''"""Harness generated from sia's template; the knobs below are what the built-in
Feedback policy edits. Contract: solve(sample, model) -> str."""

PROMPT = {prompt!r}
EXTRACT = {extract!r}
SAMPLES = {samples!r}
TEMPERATURE = {temperature!r}
MAX_TOKENS = {max_tokens!r}
FALLBACK = {fallback!r}


def build_prompt(sample):
    fields = {{k: v for k, v in sample.items() if k not in ("id", "options")}}
    if PROMPT == "bare":
        return str(fields.get("question") or next(iter(fields.values()), ""))
    lines = [f"{{key}}: {{value}}" for key, value in fields.items()]
    if sample.get("options"):
        lines.append("options: " + ", ".join(sample["options"]))
    lines.append("answer:")
    return "\\n".join(lines)


def extract(text, options):
    text = text.strip()
    if EXTRACT == "raw":
        return text or None
    if EXTRACT == "first_line":
        return text.splitlines()[0].strip() if text else None
    words = [w.strip(".,;:!?\\"'").lower() for w in text.split()]
    for word in words:
        for option in options:
            if word == option.lower():
                return option
    return None


def solve(sample, model):
    options = sample.get("options") or []
    completions = model.complete(build_prompt(sample), max_tokens=MAX_TOKENS,
                                 temperature=TEMPERATURE, n=SAMPLES)
    if isinstance(completions, str):
        completions = [completions]
    answers = [a for a in (extract(c, options) for c in completions) if a]
    if answers:
        return max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
    if FALLBACK == "first_option" and options:
        return options[0]
    return ""
'''


def render(knobs: Knobs) -> str:
    return TEMPLATE.format(**asdict(knobs))


def read_knobs(source: str) -> Knobs | None:
    """The knobs of a template-rendered harness, or None for any other harness."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values: dict[str, object] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in KNOB_NAMES):
            try:
                values[node.targets[0].id.lower()] = ast.literal_eval(node.value)
            except ValueError:
                return None
    if set(values) != {name.lower() for name in KNOB_NAMES}:
        return None
    try:
        return Knobs(**values)  # type: ignore[arg-type]
    except TypeError:
        return None
