"""The stratified trajectory digest the Feedback Agent reads (pure).

A generation's dev episodes are sorted into failure kinds — `unparseable` (empty, or not
one of the sample's options), `wrong`, `timeout`, `crash` (any other non-ok ending) and
`correct` — and a seeded random sample of each kind is rendered, failures *and*
successes, so the agent sees every kind that occurred rather than the first files by
name. The text fits a character budget; the count of every kind is always shown, even
when examples had to be cut.

The input is only what the caller hands over: per episode its id, sample id, status,
prediction and reward, the sample's public fields and a short trajectory summary.
Labels are never part of it (a task exposes public samples only), and episode fields
other than those named above are ignored, so nothing else can leak into a prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GROUPS: tuple[str, ...] = ("unparseable", "wrong", "timeout", "crash", "correct")
"""Failure kinds in the order they are rendered (most actionable first)."""

MIN_CHARS = 2400
"""The smallest budget that still fits the counts and one short example of every kind."""
_MIN_BLOCK = 120
_USEFUL_BLOCK = 700
"""Below this an example says too little: show fewer, longer ones."""
_SAMPLE_CHARS = 800
_PREDICTION_CHARS = 240
_SUMMARY_CHARS = 1500


@dataclass(frozen=True)
class Digest:
    text: str
    counts: dict[str, int]
    """Episodes per kind, every kind present (zero when none)."""
    episode_ids_shown: tuple[str, ...]
    digest_hash: str
    """sha256 of `text` as UTF-8, which is also its blob name in a content-addressed store."""

    @property
    def summary(self) -> str:
        n = sum(self.counts.values())
        parts = ", ".join(f"{self.counts[g]} {g}" for g in GROUPS)
        return f"{n} dev episodes: {parts}; {len(self.episode_ids_shown)} shown"


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, the middle elided (heads and tails both matter)."""
    if len(text) <= limit:
        return text
    marker = f" …[{len(text) - limit} chars cut]… "
    room = limit - len(marker)
    if room < 8:
        return text[:limit]
    # the marker counts the characters cut, which is slightly more than len(text) - limit
    marker = f" …[{len(text) - room} chars cut]… "
    room = max(0, limit - len(marker))
    head = (room + 1) // 2
    tail = room - head
    return text[:head] + marker + (text[len(text) - tail:] if tail else "")


def parses(prediction: str | None, options: Sequence[str]) -> bool:
    """An answer counts as parseable when non-empty and, if the sample has options, one of them."""
    if prediction is None or not str(prediction).strip():
        return False
    return not options or str(prediction).strip().lower() in {str(o).lower() for o in options}


def classify(episode: Mapping[str, Any], options: Sequence[str]) -> str:
    """The failure kind of one episode (same order of tests as the built-in policy)."""
    status = episode.get("status")
    if status == "timeout":
        return "timeout"
    if status != "ok":
        return "crash"
    prediction = episode.get("prediction")
    if prediction is None or not str(prediction).strip():
        return "unparseable"
    if float(episode.get("reward") or 0.0) > 0:
        return "correct"
    if not parses(prediction, options):
        return "unparseable"
    return "wrong"


Summaries = Mapping[str, str] | Callable[[str], str]


def build_digest(episodes: Sequence[Mapping[str, Any]], samples: Mapping[str, Mapping[str, Any]],
                 summaries: Summaries, *, seed: int,
                 options: Mapping[str, Sequence[str]] | None = None,
                 max_chars: int = 12_000, per_group: int = 4,
                 example_chars: int = 2_400) -> Digest:
    """Digest of `episodes` (dicts with episode_id, sample_id, status, prediction, reward).

    `samples` maps sample id → its public fields; `summaries` maps episode id → a short
    trajectory summary (or is a function of the episode id, called only for episodes
    shown); `options` maps sample id → its answer options (default: the sample's
    "options" field). Deterministic in `seed`; the text is at most `max_chars` long.
    """
    if max_chars < MIN_CHARS:
        raise ValueError(f"max_chars={max_chars} is below the minimum of {MIN_CHARS}")
    if per_group < 1:
        raise ValueError("per_group must be at least 1")

    def options_for(sample_id: str) -> list[str]:
        if options is not None and sample_id in options:
            return [str(o) for o in options[sample_id]]
        found = (samples.get(sample_id) or {}).get("options")
        return [str(o) for o in found] if isinstance(found, (list, tuple)) else []

    groups: dict[str, list[Mapping[str, Any]]] = {g: [] for g in GROUPS}
    for episode in sorted(episodes, key=lambda e: str(e["episode_id"])):
        groups[classify(episode, options_for(str(episode["sample_id"])))].append(episode)
    counts = {g: len(groups[g]) for g in GROUPS}
    rng = random.Random(seed)
    order = {g: rng.sample(groups[g], len(groups[g])) for g in GROUPS}
    present = [g for g in GROUPS if counts[g]]

    def summary_of(episode_id: str) -> str:
        if callable(summaries):
            return summaries(episode_id)
        return summaries.get(episode_id, "")

    # Reserve the header at its widest (every episode "shown") and the cut note.
    reserve = len(_header(counts, {g: counts[g] for g in GROUPS}, cut=True)) + sum(
        len(_heading(g, counts[g], counts[g])) for g in present)
    available = max_chars - reserve
    wanted = sum(min(per_group, counts[g]) for g in present)
    # Room for every wanted example if each still gets a useful size, else for fewer and
    # longer ones; the first round (one per kind) always fits.
    cap = min(example_chars, available // max(1, len(present)),
              max(available // max(1, wanted), available // max(1, 2 * len(present)), _USEFUL_BLOCK))
    cap = max(cap, _MIN_BLOCK)

    chosen: dict[str, list[str]] = {g: [] for g in GROUPS}
    shown: dict[str, list[str]] = {g: [] for g in GROUPS}
    used = 0
    cut = False
    for round_ in range(per_group):
        for g in present:
            if round_ >= len(order[g]):
                continue
            episode = order[g][round_]
            block = _block(episode, samples.get(str(episode["sample_id"])) or {},
                           options_for(str(episode["sample_id"])),
                           summary_of(str(episode["episode_id"])), cap)
            if used + len(block) > available:
                cut = True
                continue
            chosen[g].append(block)
            shown[g].append(str(episode["episode_id"]))
            used += len(block)
    if any(len(chosen[g]) < min(per_group, counts[g]) for g in present):
        cut = True

    parts = [_header(counts, {g: len(chosen[g]) for g in GROUPS}, cut=cut)]
    for g in present:
        parts.append(_heading(g, counts[g], len(chosen[g])))
        parts.extend(chosen[g])
    text = "".join(parts)
    assert len(text) <= max_chars, (len(text), max_chars)
    return Digest(text=text, counts=counts, episode_ids_shown=tuple(e for g in present for e in shown[g]),
                  digest_hash=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _header(counts: Mapping[str, int], shown: Mapping[str, int], *, cut: bool) -> str:
    n = sum(counts.values())
    lines = [
        f"TRAJECTORY DIGEST: {n} dev episodes, a seeded random sample of every kind "
        "(failures and successes).",
        "counts: " + ", ".join(f"{g} {counts[g]}" for g in GROUPS),
        "shown: " + ", ".join(f"{g} {shown[g]}/{counts[g]}" for g in GROUPS if counts[g]),
    ]
    if cut:
        lines.append("(some examples were left out to fit the size budget)")
    return "\n".join(lines) + "\n"


def _heading(group: str, count: int, shown: int) -> str:
    return f"\n## {group}: {count} episodes, {shown} shown\n"


def _block(episode: Mapping[str, Any], sample: Mapping[str, Any], options: Sequence[str],
           summary: str, cap: int) -> str:
    """One example in at most `cap` characters; each field shrinks with the budget."""
    reward = episode.get("reward")
    reward_text = "n/a" if reward is None else f"{float(reward):.4g}"
    prediction = episode.get("prediction")
    title = (f"### episode {episode['episode_id']} | sample {episode['sample_id']} | "
             f"status {episode.get('status')} | reward {reward_text}")
    rest = max(0, cap - len(title) - 60)
    prediction_room = min(_PREDICTION_CHARS, max(16, rest // 6))
    options_room = min(300, max(16, rest // 8)) if options else 0
    sample_room = min(_SAMPLE_CHARS, max(24, (rest - prediction_room - options_room) * 2 // 5))
    summary_room = min(_SUMMARY_CHARS, max(0, rest - prediction_room - options_room - sample_room))
    lines = [
        title,
        "prediction: " + ("(none)" if prediction is None else
                          clip(json.dumps(str(prediction), ensure_ascii=False), prediction_room)),
        "sample: " + clip(json.dumps({k: v for k, v in sample.items() if not (options and k == "options")},
                                     ensure_ascii=False, sort_keys=True, default=str),
                          sample_room),
    ]
    if options:
        lines.append("options: " + clip(", ".join(options), options_room))
    if summary and summary_room >= 24:
        lines.append("trajectory:\n" + clip(summary.rstrip(), summary_room))
    return clip("\n".join(lines), cap - 1) + "\n"


# ---------------------------------------------------------------- trajectory summaries


def summarize_trajectory(trajectory: Mapping[str, Any], max_chars: int = 1200,
                         max_calls: int = 3, prompt_chars: int = 500,
                         completion_chars: int = 240) -> str:
    """A short text of a recorded trajectory: the first and last model calls, clipped.

    Understands the gateway's `ModelCall` dumps (`prompts`, `messages`, `generations`,
    `status`, `error`) and the simple `{"prompt", "completion"}` form of stand-ins.
    """
    calls = trajectory.get("calls")
    if not isinstance(calls, list):
        calls = []
    lines: list[str] = [f"{len(calls)} model call(s)"]
    picked = list(enumerate(calls))
    if len(picked) > max_calls:
        first_calls = max_calls - 1
        picked = picked[:first_calls] + [picked[-1]]
        lines.append(f"(showing calls {', '.join(str(i) for i, _ in picked)})")
    for i, call in picked:
        if not isinstance(call, Mapping):
            continue
        prompts = call.get("prompts")
        if not prompts and call.get("messages"):
            prompts = [json.dumps(call["messages"], ensure_ascii=False)]
        if not prompts and "prompt" in call:
            prompts = [str(call["prompt"])]
        completions = [g.get("text", "") for g in call.get("generations") or [] if isinstance(g, Mapping)]
        if not completions and "completion" in call:
            completions = [str(call["completion"])]
        status = call.get("status")
        head = f"call {i}" + (f" (HTTP {status})" if status not in (None, 200) else "")
        lines.append(head + ":")
        for prompt in (prompts or [])[:1]:
            lines.append("  prompt: " + clip(json.dumps(str(prompt), ensure_ascii=False), prompt_chars))
        if prompts and len(prompts) > 1:
            lines.append(f"  (+{len(prompts) - 1} more prompts)")
        for j, completion in enumerate(completions[:2]):
            lines.append(f"  completion[{j}]: " +
                         clip(json.dumps(completion, ensure_ascii=False), completion_chars))
        if len(completions) > 2:
            lines.append(f"  (+{len(completions) - 2} more completions)")
        if call.get("error"):
            lines.append("  error: " + clip(str(call["error"]), 200))
    for key in ("error", "log_tail", "log"):
        value = trajectory.get(key)
        if value:
            lines.append(f"{key}: " + clip(str(value), 300))
    return clip("\n".join(lines), max_chars)
