"""The tools the Feedback and Meta agents investigate with, as JSON-text results.

What a tool may show is fixed here, once: the public fields of train and dev samples, the
task's public examples (train samples with their labels, `Task.public_examples`: train labels
are public data, as in ordinary ML practice), this run's recorded dev episodes and rewards, its
harnesses and decisions, and the results of running a draft harness on chosen train or dev
samples. A tool never reads a dev or test label (rewards come from `Task.reward`, which refuses
test samples), never names a test sample (asked for one, it answers with an error), and never
holds a secret. Results are clipped to `RESULT_CHARS`, so one call cannot flood the conversation.

A tool's failure (bad arguments, an unknown episode) is the model's to read and correct: it
comes back as an error result, never as an exception out of the effect.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sia.agents import prompts
from sia.agents.digest import clip
from sia.core.effect_models import FeedbackEpisode, FeedbackRequest
from sia.core.events.types import Usage
from sia.harness.contract import validate_harness
from sia.llm import ToolSpec
from sia.store.blobs import BlobStore

if TYPE_CHECKING:
    from sia.effects.targets import TargetPool
    from sia.harness.sandbox import Isolation
    from sia.tasks.loader import Task

RESULT_CHARS = 12_000
"""The most a tool result may hold; a larger one is cut in the middle."""
MAX_DRAFT_SAMPLES = 4
"""The most samples one run_draft_harness call may run (each is a sandboxed episode)."""
LIST_LIMIT = 50
_FIELD_CHARS = 600
_PREDICTION_CHARS = 200


class ToolInputError(ValueError):
    """Arguments a tool cannot use; the message goes back to the model as an error result."""


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False
    usage: Usage = Usage()


@dataclass(frozen=True)
class Tool:
    """A tool the agent may call while it investigates (not the one that ends it)."""

    spec: ToolSpec
    call: Callable[[Mapping[str, Any]], ToolOutcome]


_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def strip_fences(source: str) -> str:
    """A module the model wrapped in a Markdown code fence, unwrapped."""
    match = _FENCE.match(source)
    return (match.group(1) if match else source).strip("\n") + "\n"


def as_json(value: Any) -> str:
    """A tool's result text: compact, stable JSON, clipped."""
    return clip(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str), RESULT_CHARS)


def run_tool(tool: Tool, arguments: Mapping[str, Any]) -> ToolOutcome:
    """The tool's outcome; bad arguments and the tool's own failures become error results."""
    try:
        return tool.call(arguments)
    except ToolInputError as exc:
        return ToolOutcome(f"error: {exc}", is_error=True)
    except Exception as exc:  # a tool's bug is one failed call, for the model to read
        return ToolOutcome(f"error: the tool failed: {type(exc).__name__}: {clip(str(exc), 400)}", is_error=True)


# ---------------------------------------------------------------- argument readers


def _text(arguments: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = arguments.get(key)
    if value is None:
        if required:
            raise ToolInputError(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise ToolInputError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _number(arguments: Mapping[str, Any], key: str) -> float | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolInputError(f"{key!r} must be a number, got {type(value).__name__}")
    return float(value)


def _integer(arguments: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = arguments.get(key)
    if value is None:
        if required:
            raise ToolInputError(f"{key!r} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolInputError(f"{key!r} must be an integer, got {type(value).__name__}")
    return value


def _ids(arguments: Mapping[str, Any], key: str) -> list[str]:
    value = arguments.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ToolInputError(f"{key!r} must be a non-empty list of sample ids")
    return list(dict.fromkeys(value))


# ---------------------------------------------------------------- draft runs


class DraftRun(Protocol):
    """Runs `source` on `sample_ids`: one result row per sample, and the usage."""

    def public_split(self, sample_id: str) -> str:
        """The split of a train or dev sample; a ToolInputError for a test or unknown one."""
        ...

    def __call__(self, source: str, sample_ids: Sequence[str], key: str, seed: int,
                 adapter_hash: str | None, blobs: BlobStore) -> tuple[list[dict[str, Any]], Usage]: ...


class DraftRunner:
    """Runs a draft harness on train/dev samples exactly as an episode runs: `play` in the
    sandbox, through the model gateway, scored by `Task.reward`. Nothing is recorded as an
    episode; the caller journals the rows and counts the usage."""

    def __init__(self, task: Task, targets: TargetPool, *, isolation: Isolation) -> None:
        from sia.effects.episode import sandbox_limits

        self.task, self.targets, self.isolation = task, targets, isolation
        self.limits = sandbox_limits(task)

    def public_split(self, sample_id: str) -> str:
        try:
            split = self.task.split_of(sample_id)
        except (KeyError, ValueError, LookupError) as exc:
            raise ToolInputError(f"no sample {sample_id!r}") from exc
        if split not in ("train", "dev"):
            raise ToolInputError(f"sample {sample_id!r} is held out: only train and dev samples can be used")
        return split

    def __call__(self, source: str, sample_ids: Sequence[str], key: str, seed: int,
                 adapter_hash: str | None, blobs: BlobStore) -> tuple[list[dict[str, Any]], Usage]:
        from sia.effects.episode import play, target_usage

        rows: list[dict[str, Any]] = []
        usage = Usage()
        for i, sample_id in enumerate(sample_ids):
            outcome, calls = play(source, self.task.sample(sample_id), episode_id=f"draft-{key}-{i}",
                                  seed=seed + i, adapter_hash=adapter_hash, targets=self.targets,
                                  blobs=blobs, limits=self.limits, isolation=self.isolation, task=self.task)
            spent = target_usage(calls, outcome.wall_s)
            usage = Usage(tokens_in=usage.tokens_in + spent.tokens_in, tokens_out=usage.tokens_out + spent.tokens_out,
                          wall_s=usage.wall_s + spent.wall_s)
            rows.append({"sample_id": sample_id, "status": outcome.status, "answer": outcome.answer,
                         "reward": self.task.reward(sample_id, outcome.answer), "error": outcome.error,
                         "stderr_tail": clip(outcome.stderr_tail, _FIELD_CHARS), "model_calls": len(calls)})
        return rows, usage


def draft_tool(draft: DraftRun, blobs: BlobStore, *, key: str, seed: int,
               adapter_hash: str | None, current: Mapping[str, float] | None = None,
               max_samples: int = MAX_DRAFT_SAMPLES) -> Tool:
    """`run_draft_harness`: a draft on up to `max_samples` train/dev samples; `current` maps a
    dev sample to this generation's reward on it, shown beside the draft's."""
    calls = [0]

    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        source = _text(arguments, "harness", required=True) or ""
        sample_ids = _ids(arguments, "samples")
        if len(sample_ids) > max_samples:
            raise ToolInputError(f"at most {max_samples} samples per call, got {len(sample_ids)}")
        for sample_id in sample_ids:
            draft.public_split(sample_id)
        source = strip_fences(source)
        problems = validate_harness(source)
        if problems:
            return ToolOutcome(as_json({"contract_problems": problems}), is_error=True)
        calls[0] += 1
        rows, usage = draft(source, sample_ids, f"{key}-{calls[0]}", seed, adapter_hash, blobs)
        for row in rows:
            if current is not None and row["sample_id"] in current:
                row["current_reward"] = current[row["sample_id"]]
        mean = sum(r["reward"] for r in rows) / len(rows)
        return ToolOutcome(as_json({"mean_reward": round(mean, 6), "samples": rows}), usage=usage)

    return Tool(ToolSpec(
        name="run_draft_harness",
        description=(f"Run a draft harness (complete module source) on up to {max_samples} train or dev "
                     "sample ids in the sandbox, with the current adapter, and see each sample's answer, "
                     "status, reward (and the current harness's reward on dev samples). Costs budget; "
                     "never touches the held-out split."),
        input_schema={"type": "object", "properties": {
            "harness": {"type": "string", "description": "The complete draft module source."},
            "samples": {"type": "array", "items": {"type": "string"}, "maxItems": max_samples,
                        "description": "Train or dev sample ids."}},
            "required": ["harness", "samples"]}), run)


# ---------------------------------------------------------------- Feedback tools


DevRewards = Callable[[], Mapping[int, Mapping[str, float]]]
"""This run's dev reward per sample, by generation: what compare_generations reads."""


@dataclass(frozen=True)
class FeedbackDesk:
    """What the Feedback tools read: the recorded request, the blobs, public task fields."""

    request: FeedbackRequest
    blobs: BlobStore
    sample: Callable[[str], dict[str, Any]]
    dev_rewards: DevRewards | None = None

    @property
    def by_id(self) -> dict[str, FeedbackEpisode]:
        return {e.episode_id: e for e in self.request.episodes}

    def current_rewards(self) -> dict[str, float]:
        return {e.sample_id: e.reward for e in self.request.episodes}


def feedback_tools(desk: FeedbackDesk) -> list[Tool]:
    """list_episodes, read_episode, compare_generations, diff_harnesses, history."""
    return [_list_episodes(desk), _read_episode(desk), _compare_generations(desk),
            _diff_harnesses(desk), _history(desk)]


def _list_episodes(desk: FeedbackDesk) -> Tool:
    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        status = _text(arguments, "status")
        sample_id = _text(arguments, "sample_id")
        low, high = _number(arguments, "min_reward"), _number(arguments, "max_reward")
        limit = _integer(arguments, "limit") or LIST_LIMIT
        matched = [e for e in desk.request.episodes
                   if (status is None or e.status == status) and (sample_id is None or e.sample_id == sample_id)
                   and (low is None or e.reward >= low) and (high is None or e.reward <= high)]
        rows = [{"episode_id": e.episode_id, "sample_id": e.sample_id, "status": e.status, "reward": e.reward,
                 "prediction": None if e.prediction is None else clip(e.prediction, _PREDICTION_CHARS)}
                for e in matched[: max(1, min(limit, LIST_LIMIT))]]
        return ToolOutcome(as_json({"generation": desk.request.generation, "total": len(desk.request.episodes),
                                    "matched": len(matched), "episodes": rows}))

    return Tool(ToolSpec(
        name="list_episodes",
        description="List this generation's dev episodes (id, sample, status, reward, prediction), filtered.",
        input_schema={"type": "object", "properties": {
            "status": {"type": "string", "description": "ok, timeout, crash, ..."},
            "min_reward": {"type": "number"}, "max_reward": {"type": "number"},
            "sample_id": {"type": "string"}, "limit": {"type": "integer", "maximum": LIST_LIMIT}}}), run)


def _read_episode(desk: FeedbackDesk) -> Tool:
    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        episode_id, sample_id = _text(arguments, "episode_id"), _text(arguments, "sample_id")
        if (episode_id is None) == (sample_id is None):
            raise ToolInputError("give either 'episode_id' or 'sample_id'")
        episode = (desk.by_id.get(episode_id) if episode_id is not None
                   else next((e for e in desk.request.episodes if e.sample_id == sample_id), None))
        if episode is None:
            what = repr(episode_id) if episode_id is not None else f"of sample {sample_id!r}"
            raise ToolInputError(f"no dev episode {what} in generation {desk.request.generation} "
                                 "(list_episodes shows their ids)")
        return ToolOutcome(as_json({
            "episode_id": episode.episode_id, "sample_id": episode.sample_id,
            "sample": {k: clip(str(v), _FIELD_CHARS) if isinstance(v, str) else v
                       for k, v in desk.sample(episode.sample_id).items()},
            "status": episode.status, "reward": episode.reward, "prediction": episode.prediction,
            "trajectory": _trajectory(episode.trajectory_hash, desk.blobs)}))

    return Tool(ToolSpec(
        name="read_episode",
        description=("Read one dev episode of this generation in full (by its id, or its sample's): the "
                     "sample's public fields, every model call (prompts, completions), the answer, its "
                     "reward, the error and stderr tail."),
        input_schema={"type": "object", "properties": {"episode_id": {"type": "string"},
                                                       "sample_id": {"type": "string"}}}), run)


def _trajectory(trajectory_hash: str | None, blobs: BlobStore) -> dict[str, Any]:
    if not trajectory_hash:
        return {"note": "no trajectory recorded"}
    try:
        recorded = json.loads(blobs.get_text(trajectory_hash))
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        return {"note": f"trajectory unavailable: {type(exc).__name__}"}
    outcome = recorded.get("outcome") or {}
    calls = []
    for call in recorded.get("calls") or []:
        calls.append({"index": call.get("index"), "status": call.get("status"),
                      "prompts": [clip(str(p), 1500) for p in (call.get("prompts") or [])[:2]],
                      "messages": clip(json.dumps(call["messages"], ensure_ascii=False), 1500)
                      if call.get("messages") else None,
                      "completions": [clip(str(g.get("text", "")), 500) for g in (call.get("generations") or [])[:4]
                                      if isinstance(g, Mapping)],
                      "error": call.get("error")})
    return {"outcome": {k: clip(str(v), _FIELD_CHARS) if isinstance(v, str) else v for k, v in outcome.items()},
            "calls": calls}


def _compare_generations(desk: FeedbackDesk) -> Tool:
    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        before = _integer(arguments, "generation", required=True)
        assert before is not None
        now = desk.request.generation
        if desk.dev_rewards is None:
            raise ToolInputError("earlier generations' per-sample rewards are not available in this run")
        recorded = desk.dev_rewards()
        if before not in recorded or before >= now:
            raise ToolInputError(f"generation {before} has no dev rewards to compare with generation {now} "
                                 f"(scored earlier generations: {sorted(g for g in recorded if g < now)})")
        old, new = recorded[before], desk.current_rewards()
        changed = [(s, old[s], new[s]) for s in sorted(set(old) & set(new)) if old[s] != new[s]]
        rows = [{"sample_id": s, "before": a, "now": b, "delta": round(b - a, 6)} for s, a, b in changed]
        return ToolOutcome(as_json({
            "generations": [before, now], "improved": sum(b > a for _, a, b in changed),
            "regressed": sum(b < a for _, a, b in changed), "unchanged": len(set(old) & set(new)) - len(changed),
            "changed": rows}))

    return Tool(ToolSpec(
        name="compare_generations",
        description="Compare an earlier generation's dev rewards with this generation's, sample by sample.",
        input_schema={"type": "object", "properties": {"generation": {"type": "integer"}},
                      "required": ["generation"]}), run)


def _diff_harnesses(desk: FeedbackDesk) -> Tool:
    history = desk.request.history

    def harness_of(generation: int) -> str:
        if not 0 <= generation < len(history):
            raise ToolInputError(f"no generation {generation} (0..{len(history) - 1})")
        return desk.blobs.get_text(history[generation].harness_hash)

    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        a = _integer(arguments, "from_generation", required=True)
        b = _integer(arguments, "to_generation")
        b = desk.request.generation if b is None else b
        assert a is not None
        return ToolOutcome(prompts.harness_diff(harness_of(a), harness_of(b), f"generation {a}",
                                                f"generation {b}", max_chars=RESULT_CHARS))

    return Tool(ToolSpec(
        name="diff_harnesses",
        description="Unified diff between two generations' harnesses (to_generation defaults to this one).",
        input_schema={"type": "object", "properties": {
            "from_generation": {"type": "integer"}, "to_generation": {"type": "integer"}},
            "required": ["from_generation"]}), run)


def _history(desk: FeedbackDesk) -> Tool:
    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        history = desk.request.history
        rows = []
        for i, entry in enumerate(history):
            following = history[i + 1] if i + 1 < len(history) else None
            delta = (None if following is None or following.score is None or entry.score is None
                     else round(following.score - entry.score, 6))
            rows.append({"generation": entry.generation, "score": entry.score,
                         "harness": entry.harness_hash[:12], "adapter": (entry.adapter_hash or "base")[:12],
                         "decision_after": entry.action, "algorithm": entry.algorithm,
                         "next_score": None if following is None else following.score, "delta": delta,
                         "no_signal": [t.model_dump(mode="json") for t in entry.no_signal]})
        tried = [t.model_dump(mode="json") for t in desk.request.tried]
        return ToolOutcome(as_json({"best_generation": desk.request.best_generation, "generations": rows,
                                    "search_candidates_tried": tried}))

    return Tool(ToolSpec(
        name="history",
        description="This run's generations: dev score, the decision taken after each, and what it led to.",
        input_schema={"type": "object", "properties": {}}), run)


# ---------------------------------------------------------------- Meta tools


def read_samples_tool(samples: Callable[[str], list[dict[str, Any]]]) -> Tool:
    """`read_samples`: public train or dev samples, for the Meta Agent."""

    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        split = _text(arguments, "split") or "train"
        if split not in ("train", "dev"):
            raise ToolInputError(f"split must be train or dev, not {split!r}")
        offset = _integer(arguments, "offset") or 0
        limit = min(_integer(arguments, "limit") or 5, 20)
        rows = samples(split)
        return ToolOutcome(as_json({"split": split, "total": len(rows), "offset": offset,
                                    "samples": rows[offset: offset + limit]}))

    return Tool(ToolSpec(
        name="read_samples",
        description="Read public samples of the train or dev split (what `solve` receives as `sample`).",
        input_schema={"type": "object", "properties": {
            "split": {"type": "string", "enum": ["train", "dev"]}, "offset": {"type": "integer"},
            "limit": {"type": "integer", "maximum": 20}}}), run)


# ---------------------------------------------------------------- public examples (Meta and Feedback)


EXAMPLES_LIMIT = 20
"""Examples one list_train_examples call shows by default."""
_LABEL_KEY_CHARS = 80
_LABEL_COUNTS = 30


def example_tools(examples: Sequence[Mapping[str, Any]]) -> list[Tool]:
    """`list_train_examples` over the task's public examples (`Task.public_examples`), or no
    tool at all when the task makes no label public."""
    return [_list_train_examples(list(examples))] if examples else []


def _label_values(label: Any) -> list[str]:
    """A label as the strings a filter matches and a count tallies: each element of a
    multi-label list, else the label itself (non-strings as compact JSON)."""
    values = label if isinstance(label, list) else [label]
    return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values]


def _list_train_examples(examples: list[Mapping[str, Any]]) -> Tool:
    def run(arguments: Mapping[str, Any]) -> ToolOutcome:
        label = _text(arguments, "label")
        contains = _text(arguments, "contains")
        offset = _integer(arguments, "offset")
        limit = _integer(arguments, "limit")
        offset, limit = (0 if offset is None else offset), (EXAMPLES_LIMIT if limit is None else limit)
        if offset < 0 or limit < 1:
            raise ToolInputError("'offset' must be 0 or more and 'limit' 1 or more")
        needle = None if contains is None else contains.casefold()
        matched = [e for e in examples
                   if (label is None or label in _label_values(e["label"]))
                   and (needle is None or needle in json.dumps(
                       {k: v for k, v in e.items() if k != "label"}, ensure_ascii=False).casefold())]
        counts = Counter(value for e in matched for value in _label_values(e["label"]))
        rows = [{k: clip(v, _FIELD_CHARS) if isinstance(v, str) else v for k, v in e.items()}
                for e in matched[offset: offset + min(limit, LIST_LIMIT)]]
        return ToolOutcome(as_json({
            "total": len(examples), "matched": len(matched), "offset": offset,
            "label_counts": {clip(k, _LABEL_KEY_CHARS): n for k, n in counts.most_common(_LABEL_COUNTS)},
            "examples": rows}))

    return Tool(ToolSpec(
        name="list_train_examples",
        description=("List the task's public training examples: train samples' public fields (without "
                     "\"options\") with their labels, and how often each label occurs among those matched. "
                     "Filter by a label (an exact label, or one element of a multi-label) and by text the "
                     "fields contain; page with offset and limit. A harness can read the same examples "
                     "from the JSONL file named by the SIA_TRAIN_EXAMPLES environment variable (absent "
                     "when the task has none); dev and test labels are never shown."),
        input_schema={"type": "object", "properties": {
            "label": {"type": "string", "description": "Only examples with this label."},
            "contains": {"type": "string", "description": "Only examples whose fields contain this text "
                                                          "(case-insensitive)."},
            "offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT}}}), run)
