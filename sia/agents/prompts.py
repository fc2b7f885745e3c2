"""Prompt builders for the LLM Meta and Feedback agents (pure text in, text out).

Each prompt is a pair: a long **system** prompt that stays the same for every call of a
run (role, the harness contract, the rules, the algorithms, the task description) and a
**user** message with what changes (samples, history, digest). Providers mark the system
prompt as a cacheable prefix, so later calls of a run, and re-asks within one call, read
it from the cache.

Nothing here sees a label: samples and digests are built from public fields only.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sia.agents.digest import clip
from sia.core.effect_models import FeedbackRequest
from sia.core.events.types import ALGORITHMS
from sia.harness.contract import HARNESS_CONTRACT

ALGORITHM_NOTES: dict[str, str] = {
    "ppo_gae": "PPO with GAE: clean, dense scalar outcome; uses the full reward signal (needs a value estimate)",
    "grpo": "GRPO: group-relative advantages, no value network; made for pass/fail outcomes",
    "entropic": "entropic advantage weighting w_i = exp(beta r_i) / mean_j exp(beta r_j): "
                "up-weights rare high-reward rollouts (sparse successes, heavy tails)",
    "reinforce_kl": "REINFORCE with a leave-one-out baseline and KL to the base model: a few "
                    "discrete reward levels",
    "dpo": "DPO: preference pairs from rollouts of the same prompt with different rewards",
    "best_of_n": "best-of-N behavioural cloning: SFT on the top rollouts (frequent successes, "
                 "or no reward variance)",
}

HARNESS_CHARS = 60_000
DIFF_CHARS = 8_000
SAMPLE_CHARS = 2_000
REPLY_ECHO_CHARS = 40_000


# ---------------------------------------------------------------- Meta


META_REPLY_RULE = """- Reply through the `harness` tool / JSON object only. Its "harness" field is the
  complete module source: plain Python, no Markdown fences, no explanations outside code."""
META_TOOLS_RULE = """- Investigate with the tools (read public samples; run a draft harness on a few train or
  dev samples to see its answers and rewards), then call `submit_harness` with the complete
  module source: plain Python, no Markdown fences. A refused harness comes back with the
  problems; fix them and submit again."""
FEEDBACK_REPLY_RULE = "- Reply through the `decision` tool / JSON object only."
FEEDBACK_TOOLS_RULE = """- Investigate before you decide: list and read episodes, compare generations, diff
  harnesses, read the history, and run a draft harness on a few dev or train samples to check
  an edit. Every call costs budget. Then call `decide` with the whole decision; a refused
  decision comes back with its problems, to correct and call `decide` again."""


def meta_system(task_description: str, *, investigating: bool = False) -> str:
    """`investigating`: the agent has tools and ends by calling `submit_harness`."""
    reply_rule = META_TOOLS_RULE if investigating else META_REPLY_RULE
    return f"""You are the Meta Agent of sia, a self-improvement loop for an AI agent.
Your job: write the first harness (scaffold) for a task. A harness is one complete Python
module that turns one task sample into an answer by calling the target model. It is run
on every sample of the task, in a sandbox, and scored; a later Feedback Agent will edit it.

# The harness contract
{HARNESS_CONTRACT.strip()}

# Rules
{reply_rule}
- Use the standard library only; no network other than `model`; no files.
- Never raise out of `solve`: catch errors and fall back to a best-effort answer. An
  exception, a timeout or a non-str return is scored as a failure.
- Keep model calls few and short (each episode has a budget of calls and tokens).
- When a sample lists answer options, return exactly one of them (extract it from the
  completion robustly; fall back to a plausible option rather than an empty answer —
  unanswered samples count as wrong).
- Write the prompt from the sample's public fields; never assume fields you were not shown.

# The task
{task_description.strip()}
"""


def meta_user(samples: Sequence[Mapping[str, Any]], reference: str | None,
              problems: Sequence[str] = (), closing: str = "Write the complete harness module now.") -> str:
    parts = ["Public samples of the task (what `solve` receives as `sample`):"]
    for sample in samples:
        parts.append(clip(json.dumps(dict(sample), ensure_ascii=False, sort_keys=True, default=str),
                          SAMPLE_CHARS))
    if reference:
        parts.append("\nA reference harness for this task (you may start from it, improve it, or "
                     "replace it):\n" + clip(reference, HARNESS_CHARS))
    if problems:
        parts.append("\nA previous harness for this task was rejected with these problems; make "
                     "sure yours does not have them:\n" + _bullets(problems))
    parts.append("\n" + closing)
    return "\n".join(parts)


def meta_reask(problems: Sequence[str]) -> str:
    return ("That harness was rejected by the contract check and smoke run:\n" + _bullets(problems)
            + "\nFix these problems and reply with the complete corrected harness module.")


# ---------------------------------------------------------------- Feedback


def feedback_system(task_description: str, *, investigating: bool = False) -> str:
    """`investigating`: the agent has tools and ends by calling `decide`."""
    reply_rule = FEEDBACK_TOOLS_RULE if investigating else FEEDBACK_REPLY_RULE
    algorithms = "\n".join(f"- {name}: {ALGORITHM_NOTES.get(name, '')}" for name in ALGORITHMS)
    return f"""You are the Feedback Agent of sia, a self-improvement loop for an AI agent.
After each generation (the current harness run with the current adapter on the dev split,
every episode scored) you decide what happens next, exactly one action:

- "edit_harness": replace the harness. Give the complete new module in "harness" (not a
  diff). Prefer focused edits that address the failures the digest shows.
- "update_weights": train a LoRA adapter of the target model on this generation's
  rollouts. Give "plan": {{"algorithm": one of the algorithms below, "params": {{...}}
  hyper-parameters (optional), "episodes": [...] episode ids to train on (optional,
  default all)}}. Only allowed in mode WH; in mode H it is refused.
- "stop": nothing promising is left to try, or the score is as good as it will get.

Optionally set "rollback_to" to an earlier generation index: the loop first restores that
generation's harness and adapter, then applies your action (a harness you give replaces
whatever is restored). Use it after a regression.

# Rules
{reply_rule}
- "rationale": why this action, grounded in the metrics, the digest and the reward
  statistics. "evidence": ids of episodes from the digest that support it — only ids the
  digest shows.
- You are shown a recommended training algorithm derived from the shape of the dev
  rewards. If your plan uses a different one, say why in "algorithm_override_reason".
- Unparseable answers, crashes and timeouts are harness problems: weights cannot fix an
  answer that is never extracted. Wrong-but-parseable answers may be fixed by either.
- Scores count unanswered samples as wrong. The held-out test split is never shown to
  you and plays no part in any decision.
- A decision that breaks these rules is refused and you will be asked again.

# Training algorithms
{algorithms}

# The harness contract
{HARNESS_CONTRACT.strip()}

# The task
{task_description.strip()}
"""


def _fmt_score(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def history_table(history: Sequence[Mapping[str, Any]]) -> str:
    """Generations, scores, the decision taken after each and what it led to."""
    lines = ["gen | score | harness | adapter | decision after it | algorithm | next gen score (delta)"]
    for i, h in enumerate(history):
        nxt = history[i + 1] if i + 1 < len(history) else None
        outcome = "-"
        if nxt is not None:
            outcome = _fmt_score(nxt.get("score"))
            if nxt.get("score") is not None and h.get("score") is not None:
                outcome += f" ({nxt['score'] - h['score']:+.4f})"
        lines.append(" | ".join([
            str(h.get("generation", i)), _fmt_score(h.get("score")),
            str(h.get("harness_hash") or "-")[:10], str(h.get("adapter_hash") or "base")[:10],
            str(h.get("action") or ("(deciding now)" if nxt is None else "-")),
            str(h.get("algorithm") or "-"), outcome,
        ]))
        for failed in h.get("no_signal") or []:
            lines.append(f"    (gen {h.get('generation', i)}: a {failed.get('algorithm')} update had no "
                         f"learning signal and changed nothing: {failed.get('reason')})")
    return "\n".join(lines)


def no_signal_section(request: FeedbackRequest) -> list[str]:
    """The weight updates already tried in this generation that had no learning signal."""
    if not request.no_signal:
        return []
    lines = ["", "# Weight updates already tried in this generation, with no learning signal "
                 "(nothing changed; do not repeat them)"]
    lines += [f"- {t.algorithm} params {json.dumps(t.params, sort_keys=True)}: {t.reason}"
              for t in request.no_signal]
    return lines


def reward_stats(rewards: Sequence[float]) -> str:
    n = len(rewards)
    if not n:
        return "no dev rewards"
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    ordered = sorted(rewards)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    levels = sorted(set(rewards))
    text = (f"n={n} mean={mean:.4f} std={std:.4f} min={ordered[0]:.4g} median={median:.4g} "
            f"max={ordered[-1]:.4g} zero={sum(1 for r in rewards if r == 0)} distinct={len(levels)}")
    if len(levels) <= 6:
        text += " levels: " + ", ".join(f"{v:.4g}×{rewards.count(v)}" for v in levels)
    return text


def harness_diff(old: str, new: str, from_label: str, to_label: str, max_chars: int = DIFF_CHARS) -> str:
    diff = "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=from_label, tofile=to_label))
    return clip(diff, max_chars) if diff else "(no textual change)"


def search_section(request: FeedbackRequest) -> list[str]:
    """When the run searches: the candidates already explored, so the next one differs."""
    if not request.candidates:
        return []
    lines = ["", f"# Search: this run explores candidates (round {request.round or 0} of generation "
                 f"{request.generation}); one is adopted only if it beats the best dev score so far. "
                 "Propose a decision unlike every candidate below."]
    if request.candidates > 1:
        lines.append(f"Propose up to {request.candidates} candidates: your decision and up to "
                     f"{request.candidates - 1} `alternatives` (other harness edits, or weight updates with "
                     "other algorithms), all different; they are explored side by side.")
    if request.parents:
        lines.append(f"You may start from any of generations {list(request.parents)} (set rollback_to).")
    lines += [f"- gen {t.generation} round {t.round} #{t.index}: {t.action}"
              + (f" ({t.algorithm})" if t.algorithm else "")
              + (f" harness {t.harness_hash[:10]}" if t.harness_hash else "")
              + f", dev {_fmt_score(t.score)}: {t.note}" for t in request.tried] or ["- (none yet)"]
    return lines


def feedback_user(request: FeedbackRequest, *, harness_source: str | None, digest_text: str,
                  last_diff: str | None, closing: str = "Decide now.") -> str:
    """The per-generation part of the Feedback prompt, from the recorded feedback request."""
    mode, shape = request.mode, request.reward_shape
    rewards = [e.reward for e in request.episodes]
    allowed = ["edit_harness", "stop"] + (["update_weights"] if mode == "WH" else [])
    parts = [
        f"# Generation {request.generation} (mode {mode}: allowed actions "
        f"{', '.join(sorted(allowed))})",
        f"Algorithms: {', '.join(ALGORITHMS)}",
        "",
        "# Metric history (dev score per generation; the decision taken after it; the score it led to)",
        history_table([h.model_dump() for h in request.history]),
        f"best generation so far: {request.best_generation}",
        "",
        "# Reward statistics of this generation (dev)",
        reward_stats(rewards),
        f"reward shape: {shape.kind}; recommended algorithm: {shape.recommended} ({shape.reason})",
        *no_signal_section(request),
        *search_section(request),
        "",
        "# Current harness",
        clip(harness_source, HARNESS_CHARS) if harness_source is not None else "(unavailable)",
        "",
        "# Last harness edit",
        last_diff or "(the harness has not been edited yet)",
        "",
        "# " + digest_text.strip(),
    ]
    force = request.force
    if force:
        parts += ["", f"# Constraint: this run's settings force the action {force.action!r}"
                      + (f" with algorithm {force.algorithm!r}" if force.algorithm else "")
                      + ". Your decision must take it; give the best version of it."]
    parts += ["", closing]
    return "\n".join(parts)


INVESTIGATE_FEEDBACK = ("The digest above is a sample. Investigate with the tools (episode ids: list_episodes), "
                        "then call `decide`.")
INVESTIGATE_META = ("Investigate with the tools if it helps (run_draft_harness shows a draft's answers and "
                    "rewards), then call `submit_harness` with the complete module.")


def feedback_reask(problems: Sequence[str]) -> str:
    return ("That decision was refused:\n" + _bullets(problems)
            + "\nReply again with a corrected decision (the whole decision, not just the fix).")


def unparseable_reask(error: str) -> str:
    return (f"Your reply could not be read as the required structured answer: {clip(error, 500)}\n"
            "Reply again with exactly one answer in the required structure.")


def echo(answer: Mapping[str, Any] | None) -> str:
    """An earlier answer as assistant text, so a re-ask can show the model what it said."""
    if answer is None:
        return "(no readable answer)"
    return clip(json.dumps(dict(answer), ensure_ascii=False, sort_keys=True, default=str),
                REPLY_ECHO_CHARS)


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {clip(str(item), 2000)}" for item in items)
