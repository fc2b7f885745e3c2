"""The LLM-backed Meta and Feedback agents, as effect handlers.

When the request carries `limits` (decider version 4 on), the provider can use tools and
`limits.max_turns` > 1, an agent investigates before it answers (`sia.agents.investigation`
with the tools of `sia.agents.tools`): it ends by calling `decide` / `submit_harness`,
checked exactly as the structured answer below is, and every step is journaled. Otherwise,
both ask a `sia.llm` provider for a structured answer (a forced tool call on Anthropic,
a `json_schema` response format on OpenAI-compatible endpoints), check it, and re-ask
within the same effect — the refusal appended to the conversation — up to
`max_attempts` times. Every attempt's tokens and dollars are summed into the effect's
usage.

Failures: a provider's `TransientLLMError` is a `TransientEffectError` and propagates
unchanged, so the runtime retries the whole effect with backoff; `PermanentLLMError`
(bad key, bad request) is an `EffectError` and fails the effect. A reply the provider
could not read as the structured answer (no tool call, not JSON, cut off) is treated
like an invalid answer: re-asked.

Meta returns `{"harness_hash", "valid", "problems"}`; when every attempt is refused the
last harness is still stored and returned with `valid: false`, so the decider's own
meta re-request loop takes over. Feedback returns the `FeedbackResult` fields; when every
attempt is refused it fails with an `EffectError` naming each attempt's problems (a run
can then be forked with `feedback.force`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sia.agents import prompts
from sia.agents.digest import Digest, build_digest, summarize_trajectory
from sia.agents.investigation import FinalTool, Investigation, Verdict, describe
from sia.agents.reward_view import RewardShapeOf, with_trainer_view
from sia.agents.tools import (
    DraftRun,
    FeedbackDesk,
    draft_tool,
    example_tools,
    feedback_tools,
    read_samples_tool,
    strip_fences,
)
from sia.core.effect_models import (
    FeedbackRequest,
    FeedbackResult,
    HistoryEntry,
    MetaRequest,
    MetaResult,
)
from sia.core.events.canonical import canonical_json
from sia.core.events.types import (
    ALGORITHMS,
    AgentLimits,
    AnswerRefused,
    Candidate,
    Force,
    Usage,
)
from sia.effects.base import EffectContext, EffectError, EffectResult
from sia.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    MissingCredentials,
    PermanentLLMError,
    Provider,
    ResponseSchema,
    ToolSpec,
    ToolUseProvider,
)
from sia.llm.pricing import usage_dollars
from sia.store.blobs import BlobStore


class PublicTask(Protocol):
    """What the agents may know of a task: public fields, and the labels the task makes public
    (train, `public_examples`), never a dev or test label."""

    @property
    def description(self) -> str: ...

    def samples(self, split: str) -> list[dict[str, Any]]: ...

    def sample(self, sample_id: str) -> dict[str, Any]: ...

    def options_of(self, sample_id: str) -> list[str]: ...

    def reference_harness(self) -> str | None: ...

    def public_examples(self) -> list[dict[str, Any]]: ...


Validate = Callable[[str], list[str]]
TrajectorySummary = Callable[[str | None, BlobStore], str]
DevRewardsOf = Callable[[str], Mapping[int, Mapping[str, float]]]
"""A run's dev reward per sample, by generation, from its id (for compare_generations)."""


def investigates(provider: Provider, limits: AgentLimits | None) -> AgentLimits | None:
    """The limits of an investigation with tools, or None for one structured request.

    A run recorded before limits existed (decider versions 1-3), a provider without tool
    use, and `agent.max_turns = 1` keep the single structured request with re-asks."""
    if limits is None or limits.max_turns <= 1 or not isinstance(provider, ToolUseProvider):
        return None
    return limits


def default_trajectory_summary(trajectory_hash: str | None, blobs: BlobStore) -> str:
    """A short summary of the trajectory JSON blob (`{"calls": [ModelCall dumps...], ...}`)."""
    if not trajectory_hash:
        return "(no trajectory recorded)"
    try:
        trajectory = json.loads(blobs.get_text(trajectory_hash))
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        return f"(trajectory unavailable: {type(exc).__name__})"
    if not isinstance(trajectory, dict):
        return "(trajectory is not a JSON object)"
    return summarize_trajectory(trajectory)


# ---------------------------------------------------------------- answer schemas


def _report_refusal(ctx: EffectContext, attempt: int, problems: Sequence[str]) -> None:
    """Record a refused answer now, so the log holds every attempt, not only the last."""
    ctx.report(AnswerRefused(effect_id=ctx.effect_id, kind=ctx.kind, attempt=attempt,
                             problems=tuple(problems)))


class MetaAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    harness: str = Field(min_length=1)
    notes: str = ""


class PlanAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: str
    params: dict[str, Any] = {}
    episodes: list[str] = []


class AlternativeAnswer(BaseModel):
    """One more decision a search round may explore beside the main one (never `stop`)."""

    model_config = ConfigDict(extra="ignore")

    action: Literal["edit_harness", "update_weights"]
    rationale: str = Field(min_length=1)
    harness: str | None = None
    plan: PlanAnswer | None = None
    algorithm_override_reason: str | None = None
    rollback_to: int | None = None


class DecisionAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: Literal["edit_harness", "update_weights", "stop"]
    rationale: str = Field(min_length=1)
    evidence: list[str] = []
    harness: str | None = None
    plan: PlanAnswer | None = None
    algorithm_override_reason: str | None = None
    rollback_to: int | None = None
    alternatives: list[AlternativeAnswer] = []
    """Only when the request asks for candidates: the other decisions to explore."""

    def alternative_decisions(self) -> list[DecisionAnswer]:
        """Each alternative as a decision of its own (checked and stored as the main one is)."""
        return [DecisionAnswer(**a.model_dump(), evidence=[]) for a in self.alternatives]


META_SCHEMA = ResponseSchema(
    name="harness",
    description="The complete harness module for the task.",
    json_schema={
        "type": "object",
        "properties": {
            "harness": {"type": "string", "description": "Complete Python module source defining solve(sample, model)."},
            "notes": {"type": "string", "description": "Optional: the design in one or two sentences."},
        },
        "required": ["harness"],
    },
)

FEEDBACK_SCHEMA = ResponseSchema(
    name="decision",
    description="The Feedback Agent's decision for this generation.",
    json_schema={
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["edit_harness", "update_weights", "stop"]},
            "rationale": {"type": "string"},
            "evidence": {"type": "array", "items": {"type": "string"},
                         "description": "Episode ids from the digest that support the decision."},
            "harness": {"type": "string",
                        "description": "edit_harness only: the complete new harness module source."},
            "plan": {
                "type": "object",
                "description": "update_weights only.",
                "properties": {
                    "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
                    "params": {"type": "object"},
                    "episodes": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["algorithm"],
            },
            "algorithm_override_reason": {
                "type": "string",
                "description": "Why the plan's algorithm differs from the recommended one, if it does."},
            "rollback_to": {"type": ["integer", "null"],
                            "description": "Optional earlier generation to restore first."},
        },
        "required": ["action", "rationale", "evidence"],
    },
)


def feedback_schema(candidates: int | None) -> ResponseSchema:
    """The decision's schema; when a search round asks for several candidates, with up to
    `candidates - 1` alternatives beside the main decision (each explored on its own branch)."""
    if not candidates or candidates < 2:
        return FEEDBACK_SCHEMA
    decision = FEEDBACK_SCHEMA.json_schema
    alternative = {
        "type": "object",
        "properties": {**{k: v for k, v in decision["properties"].items() if k != "evidence"},
                       "action": {"type": "string", "enum": ["edit_harness", "update_weights"]}},
        "required": ["action", "rationale"],
    }
    properties = {**decision["properties"], "alternatives": {
        "type": "array", "items": alternative, "maxItems": candidates - 1,
        "description": f"Up to {candidates - 1} more decisions for this search round, each unlike the main "
                       "one and unlike every candidate tried: each is explored on its own branch, and the "
                       "best on dev is adopted if it beats the incumbent."}}
    return ResponseSchema(name=FEEDBACK_SCHEMA.name, description=FEEDBACK_SCHEMA.description,
                          json_schema={**decision, "properties": properties})


# ---------------------------------------------------------------- calling the model


@dataclass
class _Conversation:
    """One effect's exchange with the model: the growing message list and the summed usage."""

    provider: Provider
    model: str | None
    system: str
    schema: ResponseSchema
    max_tokens: int
    seed: int
    messages: list[Message] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    wall_s: float = 0.0
    served_by: str | None = None

    def ask(self) -> LLMResponse:
        """One call. Provider errors propagate as they are, except an unreadable answer: `_Unreadable`."""
        request = LLMRequest(provider=self.provider.name, model=self.model, system=self.system,
                             messages=tuple(self.messages), max_tokens=self.max_tokens,
                             response_schema=self.schema, seed=self.seed, cache_prefix=True)
        started = time.monotonic()
        try:
            response = self.provider.complete(request)
        except PermanentLLMError as exc:
            if _unreadable(exc):
                raise _Unreadable(str(exc)) from None
            raise
        finally:
            self.wall_s += time.monotonic() - started
        self.served_by = response.model or self.served_by
        u = response.usage
        self.tokens_in += u.total_input_tokens
        self.tokens_out += u.output_tokens
        priced = self.model or response.model
        self.cost += usage_dollars(priced, u)
        return response

    def refuse(self, answer_text: str, reask: str) -> None:
        self.messages += [Message(role="assistant", content=answer_text), Message(role="user", content=reask)]

    @property
    def usage(self) -> Usage:
        return Usage(tokens_in=self.tokens_in, tokens_out=self.tokens_out, dollars=self.cost,
                     wall_s=round(self.wall_s, 6))

    @property
    def label(self) -> str:
        return f"{self.provider.name}:{self.model or self.served_by or 'default'}"


class _Unreadable(Exception):
    """The provider answered, but not with a readable structured answer."""


def _unreadable(exc: PermanentLLMError) -> bool:
    """A provider's 'bad output' failure (no HTTP status): worth re-asking, unlike a 4xx."""
    return exc.status is None and not isinstance(exc, MissingCredentials)


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors()]


# ---------------------------------------------------------------- Meta


class LLMMeta:
    """Meta Agent: writes the first harness from the task description and public samples."""

    kind = "meta"

    def __init__(self, provider: Provider, model: str | None, task: PublicTask, validate: Validate, *,
                 max_attempts: int = 3, n_samples: int = 5, max_tokens: int = 16_000,
                 draft: DraftRun | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.provider, self.model, self.task, self.validate = provider, model, task, validate
        self.max_attempts, self.n_samples, self.max_tokens = max_attempts, n_samples, max_tokens
        self.draft = draft

    def run(self, request: MetaRequest, ctx: EffectContext) -> EffectResult:
        limits = investigates(self.provider, request.limits)
        if limits is not None:
            return self._investigate(request, limits, ctx)
        conversation = _Conversation(self.provider, self.model, prompts.meta_system(self.task.description),
                                     META_SCHEMA, self.max_tokens, ctx.seed)
        samples = public_samples(self.task, self.n_samples, ctx.seed)
        conversation.messages.append(Message(role="user", content=prompts.meta_user(
            samples, self.task.reference_harness(), request.problems)))
        last_source: str | None = None
        history: list[str] = []
        problems: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = conversation.ask()
            except _Unreadable as exc:
                problems = [f"unreadable answer: {exc}"]
                history.append(f"attempt {attempt}: {problems[0]}")
                _report_refusal(ctx, attempt, problems)
                conversation.refuse("(unreadable answer)", prompts.unparseable_reask(str(exc)))
                continue
            try:
                answer = MetaAnswer.model_validate(response.structured or {})
            except ValidationError as exc:
                problems = _errors(exc)
                history.append(f"attempt {attempt}: " + "; ".join(problems))
                _report_refusal(ctx, attempt, problems)
                conversation.refuse(prompts.echo(response.structured), prompts.meta_reask(problems))
                continue
            source = strip_fences(answer.harness)
            last_source = source
            problems = list(self.validate(source))
            if not problems:
                return EffectResult(MetaResult(harness_hash=ctx.blobs.put_text(source), valid=True),
                                    conversation.usage)
            history.append(f"attempt {attempt}: " + "; ".join(problems))
            _report_refusal(ctx, attempt, problems)
            conversation.refuse(prompts.echo({"harness": source}), prompts.meta_reask(problems))
        summary = [f"no valid harness after {self.max_attempts} attempts ({conversation.label})"] + history
        return EffectResult(MetaResult(
            harness_hash=ctx.blobs.put_text(last_source) if last_source is not None else None,
            valid=False, problems=tuple(problems + summary)), conversation.usage)

    def _investigate(self, request: MetaRequest, limits: AgentLimits, ctx: EffectContext) -> EffectResult:
        assert isinstance(self.provider, ToolUseProvider)
        tools = [read_samples_tool(self.task.samples), *example_tools(self.task.public_examples())]
        if self.draft is not None:
            tools.append(draft_tool(self.draft, ctx.blobs, key=ctx.effect_id[:16], seed=ctx.seed, adapter_hash=None))

        def check(arguments: Mapping[str, Any], attempt: int) -> list[str]:
            try:
                problems = list(self.validate(strip_fences(MetaAnswer.model_validate(dict(arguments)).harness)))
            except ValidationError as exc:
                problems = _errors(exc)
            if problems:
                _report_refusal(ctx, attempt, problems)
            return problems

        final = FinalTool(ToolSpec(name="submit_harness", description=META_SCHEMA.description,
                                   input_schema=META_SCHEMA.json_schema), check)
        investigation = Investigation(self.provider, self.model, system=prompts.meta_system(
            self.task.description, investigating=True), tools=tools, final=final, limits=limits,
            max_tokens=self.max_tokens)
        opening = prompts.meta_user(public_samples(self.task, self.n_samples, ctx.seed),
                                    self.task.reference_harness(), request.problems,
                                    closing=prompts.INVESTIGATE_META)
        verdict = investigation.run(opening, ctx)
        if verdict.answer is None:
            return EffectResult(MetaResult(harness_hash=None, valid=False, problems=(
                *verdict.problems, f"no valid harness ({self.provider.name}:{investigation.label}; "
                f"{describe(verdict)})")), verdict.usage)
        source = strip_fences(MetaAnswer.model_validate(verdict.answer).harness)
        return EffectResult(MetaResult(harness_hash=ctx.blobs.put_text(source), valid=True), verdict.usage)


def public_samples(task: PublicTask, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` public samples, drawn with `seed`: from the train split, else the dev split."""
    pool: list[dict[str, Any]] = []
    for split in ("train", "dev"):
        try:
            pool = list(task.samples(split))
        except (KeyError, ValueError, LookupError):
            pool = []
        if pool:
            break
    pool.sort(key=lambda s: str(s.get("id", "")))
    return random.Random(seed).sample(pool, min(n, len(pool)))


# ---------------------------------------------------------------- Feedback


class LLMFeedback:
    """Feedback Agent: reads the generation's metrics and digest and decides what to do next.

    `request.force` ("stop", "update_weights[:ALGORITHM]" or "edit_harness"): stop and
    update_weights are obeyed without calling the model (the algorithm defaults to the
    recommended one); edit_harness needs a harness, so it is passed to the model as a
    constraint and any other action is refused. All three are marked `forced`.
    """

    kind = "feedback"

    def __init__(self, provider: Provider, model: str | None, task: PublicTask, validate: Validate,
                 trajectory_summary: TrajectorySummary = default_trajectory_summary, *,
                 max_attempts: int = 3, digest_chars: int = 12_000, per_group: int = 4,
                 max_tokens: int = 16_000, reward_shape_of: RewardShapeOf | None = None,
                 draft: DraftRun | None = None, dev_rewards: DevRewardsOf | None = None,
                 opening_digest_chars: int = 4_000) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.reward_shape_of = reward_shape_of
        self.draft, self.dev_rewards, self.opening_digest_chars = draft, dev_rewards, opening_digest_chars
        self.provider, self.model, self.task, self.validate = provider, model, task, validate
        self.trajectory_summary = trajectory_summary
        self.max_attempts, self.digest_chars, self.per_group = max_attempts, digest_chars, per_group
        self.max_tokens = max_tokens

    def digest(self, request: FeedbackRequest, blobs: BlobStore, seed: int, max_chars: int | None = None) -> Digest:
        episodes = [e.model_dump() for e in request.episodes]
        sample_ids = sorted({str(e["sample_id"]) for e in episodes})
        samples = {sid: self.task.sample(sid) for sid in sample_ids}
        options = {sid: list(self.task.options_of(sid)) for sid in sample_ids}
        trajectories = {str(e["episode_id"]): e.get("trajectory_hash") for e in episodes}
        return build_digest(episodes, samples, lambda eid: self.trajectory_summary(trajectories.get(eid), blobs),
                            seed=seed, options=options, max_chars=max_chars or self.digest_chars,
                            per_group=self.per_group)

    def run(self, request: FeedbackRequest, ctx: EffectContext) -> EffectResult:
        request, shape = with_trainer_view(request, self.reward_shape_of, ctx.blobs)
        limits = investigates(self.provider, request.limits)
        digest = self.digest(request, ctx.blobs, ctx.seed,
                             self.opening_digest_chars if limits is not None else None)
        digest_hash = ctx.blobs.put_text(digest.text)
        label = f"{self.provider.name}:{self.model or 'default'}"
        base: dict[str, Any] = {"digest_hash": digest_hash, "digest_summary": digest.summary,
                                "rollback_to": None, "forced": False, "provider": label}
        if shape is not None:
            base["reward_shape"] = shape
        force = request.force
        forced_action = force.action if force else None
        if force is not None and force.action in ("stop", "update_weights"):
            return EffectResult(self._forced(force, request.reward_shape.recommended, base))

        current = ctx.blobs.get_text(request.harness_hash) if request.harness_hash else None
        if limits is not None:
            return self._investigate(request, limits, ctx, digest_hash, current, base, forced_action)
        conversation = _Conversation(self.provider, self.model, prompts.feedback_system(self.task.description),
                                     feedback_schema(request.candidates), self.max_tokens, ctx.seed)
        conversation.messages.append(Message(role="user", content=prompts.feedback_user(
            request, harness_source=current, digest_text=ctx.blobs.get_text(digest_hash),
            last_diff=last_edit_diff(request.history, ctx.blobs))))
        refused: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = conversation.ask()
            except _Unreadable as exc:
                refused.append(f"attempt {attempt}: unreadable answer: {exc}")
                _report_refusal(ctx, attempt, [f"unreadable answer: {exc}"])
                conversation.refuse("(unreadable answer)", prompts.unparseable_reask(str(exc)))
                continue
            try:
                answer = DecisionAnswer.model_validate(response.structured or {})
            except ValidationError as exc:
                problems = _errors(exc)
            else:
                problems = check_decision(answer, request, digest.episode_ids_shown, current, self.validate,
                                          forced_action=forced_action)
            if not problems:
                result = self._result(answer, request, ctx.blobs, base, conversation.label,
                                      forced=forced_action is not None, attempt=attempt, refused=refused)
                return EffectResult(result, conversation.usage)
            refused.append(f"attempt {attempt}: " + "; ".join(problems))
            _report_refusal(ctx, attempt, problems)
            conversation.refuse(prompts.echo(response.structured), prompts.feedback_reask(problems))
        raise EffectError(f"feedback ({conversation.label}): no valid decision after {self.max_attempts} "
                          "attempts: " + " | ".join(refused))

    def _investigate(self, request: FeedbackRequest, limits: AgentLimits, ctx: EffectContext, digest_hash: str,
                     current: str | None, base: dict[str, Any], forced_action: str | None) -> EffectResult:
        """Decide after investigating with tools; every dev episode of the generation may be evidence."""
        assert isinstance(self.provider, ToolUseProvider)
        run_id = ctx.run_id
        dev_rewards = self.dev_rewards
        desk = FeedbackDesk(request, ctx.blobs, self.task.sample,
                            (lambda: dev_rewards(run_id)) if dev_rewards is not None else None)
        tools = [*feedback_tools(desk), *example_tools(self.task.public_examples())]
        if self.draft is not None:
            tools.append(draft_tool(self.draft, ctx.blobs, key=ctx.effect_id[:16], seed=ctx.seed,
                                    adapter_hash=request.adapter_hash, current=desk.current_rewards()))
        shown = [e.episode_id for e in request.episodes]

        def check(arguments: Mapping[str, Any], attempt: int) -> list[str]:
            try:
                answer = DecisionAnswer.model_validate(dict(arguments))
            except ValidationError as exc:
                problems = _errors(exc)
            else:
                problems = check_decision(answer, request, shown, current, self.validate,
                                          forced_action=forced_action)
            if problems:
                _report_refusal(ctx, attempt, problems)
            return problems

        schema = feedback_schema(request.candidates)
        final = FinalTool(ToolSpec(name="decide", description=schema.description,
                                   input_schema=schema.json_schema), check)
        investigation = Investigation(self.provider, self.model, system=prompts.feedback_system(
            self.task.description, investigating=True), tools=tools, final=final, limits=limits,
            max_tokens=self.max_tokens)
        opening = prompts.feedback_user(request, harness_source=current, digest_text=ctx.blobs.get_text(digest_hash),
                                        last_diff=last_edit_diff(request.history, ctx.blobs),
                                        closing=prompts.INVESTIGATE_FEEDBACK)
        verdict = investigation.run(opening, ctx)
        label = f"{self.provider.name}:{investigation.label}"
        if verdict.answer is None:
            raise EffectError(f"feedback ({label}): no valid decision: " + " | ".join(verdict.problems)
                              + f" ({describe(verdict)})")
        result = self._result(DecisionAnswer.model_validate(verdict.answer), request, ctx.blobs, base, label,
                              forced=forced_action is not None, attempt=len(verdict.refused) + 1,
                              refused=verdict.refused, investigated=verdict)
        return EffectResult(result, verdict.usage)

    def _forced(self, force: Force, recommended: str | None, base: dict[str, Any]) -> FeedbackResult:
        result = {**base, "action": force.action, "forced": True, "evidence": [],
                  "rationale": f"forced by the run's settings (feedback.force={force}); the model was not asked"}
        if force.action == "update_weights":
            chosen = force.algorithm or recommended or "grpo"
            result["plan"] = {"algorithm": chosen, "params": {}, "episodes": []}
            if not force.algorithm:
                result["rationale"] += f"; algorithm {chosen} as the reward shape recommends"
        return FeedbackResult.model_validate(result)

    def _result(self, answer: DecisionAnswer, request: FeedbackRequest, blobs: BlobStore,
                base: dict[str, Any], label: str, *, forced: bool, attempt: int,
                refused: Sequence[str], investigated: Verdict | None = None) -> FeedbackResult:
        decided = _decided(answer, request, blobs)
        rationale = decided["rationale"]
        if investigated is not None:
            rationale += f"\n[sia: {describe(investigated)}]"
            if refused:
                rationale += f"\n[sia: accepted on decide call {attempt}; refused before: " + " | ".join(refused) + "]"
        elif refused:
            rationale += (f"\n[sia: accepted on attempt {attempt} of {self.max_attempts}; refused before: "
                          + " | ".join(refused) + "]")
        result: dict[str, Any] = {**base, **decided, "provider": label, "forced": forced, "rationale": rationale,
                                  "evidence": list(dict.fromkeys(answer.evidence)),
                                  "rollback_to": answer.rollback_to}
        if (request.candidates or 0) > 1 and answer.alternatives:
            result["candidates"] = _candidates(answer, request, blobs, result)
        return FeedbackResult.model_validate(result)


def _decided(decision: DecisionAnswer, request: FeedbackRequest, blobs: BlobStore) -> dict[str, Any]:
    """A decision's action, stored harness, plan and rationale (with an override's reason)."""
    recommended = request.reward_shape.recommended
    decided: dict[str, Any] = {"action": decision.action, "rationale": decision.rationale.strip()}
    if decision.action == "edit_harness":
        assert decision.harness is not None
        decided["harness_hash"] = blobs.put_text(strip_fences(decision.harness))
    if decision.action == "update_weights":
        assert decision.plan is not None
        decided["plan"] = {"algorithm": decision.plan.algorithm, "params": decision.plan.params,
                           "episodes": list(decision.plan.episodes)}
        if decision.plan.algorithm != recommended:
            decided["rationale"] += (f"\n[algorithm {decision.plan.algorithm} overrides the recommended "
                                     f"{recommended}: {(decision.algorithm_override_reason or '').strip()}]")
    return decided


def _candidates(answer: DecisionAnswer, request: FeedbackRequest, blobs: BlobStore,
                main: dict[str, Any]) -> list[Candidate]:
    """The main decision (its result fields, `main`) and its alternatives as a search round's
    candidates, each once, at most `request.candidates`."""
    decided = [main, *(_decided(d, request, blobs) | {"rollback_to": d.rollback_to}
                       for d in answer.alternative_decisions())]
    candidates: dict[str, Candidate] = {}
    for fields in decided:
        candidate = Candidate(action=fields["action"], rationale=fields["rationale"],
                              harness_hash=fields.get("harness_hash"), plan=fields.get("plan"),
                              parent_generation=fields["rollback_to"])
        same = canonical_json(candidate.model_dump(mode="json", exclude={"rationale"}))
        candidates.setdefault(same, candidate)
    return list(candidates.values())[: request.candidates]


def check_decision(answer: DecisionAnswer, request: FeedbackRequest, shown: Sequence[str],
                   current_source: str | None, validate: Validate, *,
                   forced_action: str | None = None) -> list[str]:
    """Why `answer` cannot be accepted for `request` (empty when it can)."""
    problems: list[str] = []
    mode = request.mode
    recommended = request.reward_shape.recommended
    if forced_action and answer.action != forced_action:
        problems.append(f"this run's settings force the action {forced_action!r}, not {answer.action!r}")
    if answer.action == "update_weights":
        if mode != "WH":
            problems.append(f"update_weights is not allowed in mode {mode}: only harness edits "
                            "(edit_harness) or stop")
        if answer.plan is None:
            problems.append("update_weights needs a plan with an algorithm")
        else:
            if answer.plan.algorithm not in ALGORITHMS:
                problems.append(f"unknown algorithm {answer.plan.algorithm!r}; choose one of "
                                f"{', '.join(ALGORITHMS)}")
            elif answer.plan.algorithm != recommended and not (answer.algorithm_override_reason or "").strip():
                problems.append(f"the plan uses {answer.plan.algorithm} instead of the recommended "
                                f"{recommended}: say why in algorithm_override_reason")
            repeated = next((t for t in request.no_signal
                             if t.algorithm == answer.plan.algorithm and t.params == answer.plan.params), None)
            if repeated is not None:
                problems.append(f"this update ({answer.plan.algorithm} with these params) already had no "
                                f"learning signal in this generation: {repeated.reason}")
            known = {e.episode_id for e in request.episodes}
            unknown = [e for e in answer.plan.episodes if e not in known]
            if unknown:
                problems.append(f"plan.episodes names episodes of no dev episode of this generation: "
                                f"{', '.join(unknown[:10])}")
    shown_set = set(shown)
    bad_evidence = [e for e in answer.evidence if e not in shown_set]
    if bad_evidence:
        problems.append(f"evidence must be episode ids shown in the digest; not shown: "
                        f"{', '.join(bad_evidence[:10])}")
    history = request.history
    if answer.rollback_to is not None and not 0 <= answer.rollback_to < len(history):
        problems.append(f"rollback_to={answer.rollback_to} is not a generation (0..{len(history) - 1})")
    if answer.action == "edit_harness":
        if not answer.harness or not answer.harness.strip():
            problems.append("edit_harness needs the complete new harness module in 'harness'")
        else:
            source = strip_fences(answer.harness)
            if current_source is not None and source == current_source and answer.rollback_to is None:
                problems.append("the new harness is identical to the current one")
            else:
                problems += [f"the harness fails its check: {p}" for p in validate(source)]
    if answer.alternatives and (request.candidates or 0) > 1:
        if answer.action == "stop":
            problems.append("stop ends the search: it takes no alternatives")
        for index, alternative in enumerate(answer.alternative_decisions()):
            problems += [f"alternatives[{index}]: {p}" for p in check_decision(
                alternative, request, shown, current_source, validate, forced_action=forced_action)]
    return problems


def last_edit_diff(history: Sequence[HistoryEntry], blobs: BlobStore) -> str | None:
    """Unified diff of the most recent harness change between consecutive generations."""
    for i in range(len(history) - 1, 0, -1):
        before, after = history[i - 1].harness_hash, history[i].harness_hash
        if before and after and before != after:
            try:
                old, new = blobs.get_text(before), blobs.get_text(after)
            except (KeyError, ValueError) as exc:
                return f"(harness changed between generations {i - 1} and {i}; diff unavailable: {exc})"
            return prompts.harness_diff(old, new, f"generation {i - 1}", f"generation {i}")
    return None
