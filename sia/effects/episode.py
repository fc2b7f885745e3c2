"""Episodes: a harness answers one sample in the sandbox, talking to the target only
through the model gateway, which records the trajectory the harness cannot skip.

Every episode (dev, train rollout, smoke run, draft run, held-out run) shows the harness the
task's public examples (`Task.public_examples_jsonl`) but the one of its own sample, so a
harness that reads them answers train and dev samples alike: from the model, never by lookup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sia.core.effect_models import EpisodeRequest, EpisodeResult
from sia.core.events.canonical import canonical_json
from sia.core.events.types import Usage
from sia.effects.base import EffectContext, EffectResult
from sia.effects.targets import TargetPool
from sia.harness.contract import validate_harness
from sia.harness.gateway import ModelCall
from sia.harness.sandbox import EpisodeOutcome, Isolation, Limits, run_episode
from sia.store.blobs import BlobStore

if TYPE_CHECKING:
    from sia.tasks.loader import Task


def sandbox_limits(task: Task) -> Limits:
    limits = task.spec.limits
    return Limits(wall_s=limits.wall_s, cpu_s=int(limits.cpu_s), memory_mb=limits.memory_mb)


def play(source: str, sample: dict[str, Any], *, task: Task, episode_id: str, seed: int,
         adapter_hash: str | None, targets: TargetPool, blobs: BlobStore,
         limits: Limits, isolation: Isolation) -> tuple[EpisodeOutcome, list[ModelCall]]:
    """One episode of `task` on `sample`: the harness sees the task's public examples but the
    sample's own."""
    examples = task.public_examples_jsonl(without=sample["id"])
    gateway = targets.gateway(adapter_hash, blobs)
    model_socket = gateway.open_episode(episode_id, seed=seed)
    try:
        outcome = run_episode(source, sample, model_socket=model_socket, limits=limits,
                              isolation=isolation, examples=examples)
    finally:
        calls = gateway.close_episode(episode_id)
    return outcome, calls


def trajectory_of(sample_id: str, outcome: EpisodeOutcome, calls: list[ModelCall]) -> dict[str, Any]:
    """What happened, without how long it took: timings vary from run to run, and a
    trajectory's hash feeds the requests (and so the seeds) of the effects that learn
    from it, so leaving them out makes a fresh run of the same config repeat itself.
    The episode's wall time is in its recorded usage."""
    return {"sample_id": sample_id,
            "outcome": outcome.model_dump(mode="json", exclude={"wall_s", "cpu_s", "max_rss_mb"}),
            "calls": [call.model_dump(mode="json", exclude={"latency_s"}) for call in calls]}


def target_usage(calls: list[ModelCall], wall_s: float) -> Usage:
    generations = [g for call in calls for g in call.generations]
    prompt_tokens = sum(len(g.prompt_token_ids) for g in generations)
    return Usage(tokens_in=prompt_tokens, tokens_out=sum(len(g.token_ids) for g in generations),
                 wall_s=wall_s)


class EpisodeHandler:
    kind = "episode"

    KEPT_SOURCES = 16

    def __init__(self, task: Task, targets: TargetPool, *, isolation: Isolation) -> None:
        self.task, self.targets, self.isolation = task, targets, isolation
        self.limits = sandbox_limits(task)
        self._sources: dict[str, str] = {}

    def source(self, harness_hash: str, blobs: BlobStore) -> str:
        """The harness's code, read (and checked against its hash) once: a generation's
        episodes all run the same few harnesses."""
        source = self._sources.get(harness_hash)
        if source is None:
            source = blobs.get_text(harness_hash)
            if len(self._sources) >= self.KEPT_SOURCES:
                self._sources.clear()
            self._sources[harness_hash] = source
        return source

    def run(self, request: EpisodeRequest, ctx: EffectContext) -> EffectResult:
        source = self.source(request.harness_hash, ctx.blobs)
        sample = self.task.sample(request.sample_id)
        outcome, calls = play(source, sample, episode_id=ctx.effect_id, seed=ctx.seed,
                              adapter_hash=request.adapter_hash, targets=self.targets,
                              blobs=ctx.blobs, limits=self.limits, isolation=self.isolation,
                              task=self.task)
        trajectory = ctx.blobs.put_text(canonical_json(trajectory_of(request.sample_id,
                                                                     outcome, calls)))
        return EffectResult(EpisodeResult(status=outcome.status, prediction=outcome.answer,
                                          trajectory_hash=trajectory, error=outcome.error),
                            target_usage(calls, outcome.wall_s))


class SmokeCheck:
    """The Meta Agent's validation: the contract, then a real run on two dev samples."""

    def __init__(self, task: Task, targets: TargetPool, blobs: BlobStore, samples: int = 2, *,
                 isolation: Isolation) -> None:
        self.task, self.targets, self.blobs, self.isolation = task, targets, blobs, isolation
        self.samples = samples
        self.limits = sandbox_limits(task)

    def __call__(self, source: str) -> list[str]:
        problems = validate_harness(source)
        if problems:
            return problems
        for index, sample in enumerate(self.task.samples("dev")[: self.samples]):
            outcome, _ = play(source, sample, episode_id=f"smoke-{index}-{id(source)}",
                              seed=index, adapter_hash=None, targets=self.targets,
                              blobs=self.blobs, limits=self.limits, isolation=self.isolation,
                              task=self.task)
            if outcome.status != "ok":
                problems.append(f"smoke run on dev sample {sample['id']}: {outcome.status}: "
                                f"{outcome.error or ''} {outcome.stderr_tail[-400:]}".strip())
        return problems
