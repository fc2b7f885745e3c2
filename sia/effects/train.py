"""Weight updates: recorded trajectories → rollouts → a training job → a stored adapter.

Rollouts are built from what the gateway recorded (exact token ids, sampling logprobs,
temperature and top-p), one per sampled completion, grouped by the prompt they answer.
Each completion is scored by the task's evaluator as if it were the answer, so
group-relative algorithms see the spread within a group; labels stay inside the evaluator.

An update that cannot change anything is not trained, and one that changed nothing is
not an update: both come back as `no_signal` with the reason (every group constant, the
adapter bit-identical), never as a new adapter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from sia.core.effect_models import EpisodeRef, TrainRequest, TrainResult
from sia.core.events.types import Usage
from sia.effects.base import EffectContext, EffectError, EffectResult
from sia.effects.targets import adapter_dir
from sia.store.blobs import BlobStore

if TYPE_CHECKING:
    from sia.tasks.loader import Task
    from sia.train.rollouts import Rollout


class TrainableModel(Protocol):
    """A base model as training needs it: where its files are (None: only a hub id), its id
    and its content hash; a hub model also names its pinned `revision`."""

    @property
    def path(self) -> str | Path | None: ...
    @property
    def model_id(self) -> str: ...
    @property
    def model_hash(self) -> str: ...


class ModelSource(Protocol):
    """What the composition root hands the train handler (the tiny model builds on first use)."""

    def model(self) -> TrainableModel: ...


class Sampled(NamedTuple):
    """One recorded completion, with the group of its prompt and its call's sampling params."""

    sample_id: str
    group: str
    generation: dict[str, Any]
    params: dict[str, Any]


def sampled_completions(episodes: Sequence[EpisodeRef], blobs: BlobStore) -> Iterator[Sampled]:
    """Every completion the gateway recorded in `episodes`' trajectories, in order."""
    for episode in episodes:
        if not episode.trajectory_hash:
            continue
        trajectory = json.loads(blobs.get_text(episode.trajectory_hash))
        for call in trajectory["calls"]:
            if call["status"] != 200 or not call["generations"]:
                continue
            n = len(call["generations"]) // max(1, len(call["prompts"]))
            for index, generation in enumerate(call["generations"]):
                yield Sampled(episode.sample_id, f"{episode.episode_id}/{call['index']}/{index // max(1, n)}",
                              generation, call.get("params") or {})


def build_rollouts(episodes: Sequence[EpisodeRef], blobs: BlobStore, task: Task,
                   eos_id: int | None) -> list[Rollout]:
    from sia.train.rollouts import Rollout

    rollouts: list[Rollout] = []
    for sampled in sampled_completions(episodes, blobs):
        generation = sampled.generation
        completion = list(generation["token_ids"])
        logprobs: list[float | None] | None = generation.get("logprobs")
        stop_id = generation.get("stop_token_id")
        stop_id = eos_id if stop_id is None else stop_id
        if generation.get("finish_reason") == "stop" and stop_id is not None:
            completion.append(stop_id)
            # samplers drop the stop token with its logprob: the trainer scores it
            logprobs = None if logprobs is None else [*logprobs, None]
        if not generation["prompt_token_ids"] or not completion:
            continue
        rollouts.append(Rollout(
            prompt_ids=generation["prompt_token_ids"], completion_ids=completion,
            reward=task.reward(sampled.sample_id, generation["text"]), group=sampled.group,
            logprobs=logprobs, temperature=sampled.params.get("temperature", 1.0),
            top_p=sampled.params.get("top_p", 1.0)))
    return rollouts


def reward_groups(episodes: Sequence[EpisodeRef], blobs: BlobStore, task: Task) -> list[list[float]]:
    """The rewards a weight update on `episodes` would learn from: one per sampled
    completion, one list per prompt (what `classify_rewards` reads). A completion that
    stopped at once counts, as the trainer learns from its stop token."""
    groups: dict[str, list[float]] = {}
    for sampled in sampled_completions(episodes, blobs):
        generation = sampled.generation
        if generation["prompt_token_ids"] and (generation["token_ids"] or generation.get("finish_reason") == "stop"):
            groups.setdefault(sampled.group, []).append(task.reward(sampled.sample_id, generation["text"]))
    return list(groups.values())


def reward_shape_of(episodes: Sequence[EpisodeRef], blobs: BlobStore, task: Task) -> dict[str, Any]:
    """`classify_rewards` of `reward_groups`, as a Feedback result records it."""
    from sia.core.reward_shape import classify_rewards

    shape = classify_rewards(reward_groups(episodes, blobs, task))
    return {"kind": shape.kind, "recommended": shape.recommended_algorithm, "reason": shape.reason,
            "completions": shape.n, "groups": shape.groups, "groups_with_spread": shape.groups_with_spread}


def eos_of(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    eos = config.get("eos_token_id")
    return eos[0] if isinstance(eos, list) else eos


class TrainHandler:
    kind = "train"

    def __init__(self, task: Task, model: ModelSource, home: Path,
                 backend: str = "local") -> None:
        self.task, self.model, self.home, self.backend = task, model, home, backend

    def run(self, request: TrainRequest, ctx: EffectContext) -> EffectResult:
        from sia.train.algorithms import model_scale, no_signal_reason, resolve_params
        from sia.train.job import store_adapter
        from sia.train.rollouts import write_rollouts
        from sia.train.spec import TrainingSpec, data_hash

        started = time.perf_counter()
        built = self.model.model()
        model_dir = Path(built.path) if built.path else None
        if model_dir is None and self.backend == "local":
            raise EffectError(f"training {built.model_id} locally needs a local copy of it: set "
                              "model_dir in [providers.vllm] of sia.toml, or use trainer=modal")
        rollouts = build_rollouts(request.episodes, ctx.blobs, self.task,
                                  eos_of(model_dir) if model_dir else None)
        if not rollouts:
            raise EffectError("no recorded model calls to train on (every rollout episode failed "
                              "before calling the model)")
        data_dir = self.home / "rollouts"
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = data_dir / f".{ctx.effect_id}.jsonl"
        write_rollouts(staging, rollouts)
        rollouts_hash = data_hash(staging)
        data = data_dir / f"{rollouts_hash}.jsonl"
        os.replace(staging, data)
        try:
            params = resolve_params(request.algorithm, request.params, model_scale(
                json.loads((model_dir / "config.json").read_text(encoding="utf-8")) if model_dir else None))
        except ValueError as exc:
            raise EffectError(f"training plan refused: {exc}") from None
        summary = {"rollouts": float(len(rollouts)),
                   "rollout_reward": sum(r.reward for r in rollouts) / len(rollouts)}
        reason = no_signal_reason(request.algorithm, rollouts, params)
        if reason is not None:
            return EffectResult(TrainResult(algorithm=request.algorithm, no_signal=reason, metrics=summary),
                                Usage(wall_s=time.perf_counter() - started))
        # Resolved defaults are part of the job's identity: new defaults are a new job.
        spec = TrainingSpec(algorithm=request.algorithm, params=params,
                            base_model_id=built.model_id, base_model_hash=built.model_hash,
                            initial_adapter_hash=request.initial_adapter_hash,
                            data_hash=rollouts_hash, seed=ctx.seed % 2**31,
                            precision="bf16" if self.backend == "modal" else "fp32")
        train = self._train_on_modal if self.backend == "modal" else self._train
        manifest, trained = train(spec, model_dir, request, data, ctx)
        metrics = {**{k: v for k, v in manifest.metrics.items() if v is not None}, **summary}
        if metrics.get("policy_unchanged") == 1.0:
            return EffectResult(TrainResult(algorithm=spec.algorithm, job_id=spec.job_id, metrics=metrics,
                                            no_signal=f"training job {spec.job_id[:12]} left every adapter "
                                                      "weight bit-identical to where it started"),
                                Usage(wall_s=time.perf_counter() - started))
        adapter_hash = store_adapter(ctx.blobs, trained)
        return EffectResult(TrainResult(job_id=spec.job_id, adapter_hash=adapter_hash,
                                        config_hash=manifest.config_hash, algorithm=spec.algorithm,
                                        metrics=metrics),
                            Usage(wall_s=time.perf_counter() - started))

    def _train(self, spec: Any, model_dir: Path | None, request: TrainRequest, data: Path,
               ctx: EffectContext) -> tuple[Any, Path]:
        """Run the job in a subprocess (re-attached by its recorded id after a crash)."""
        from sia.train.local import LocalTrainer, TrainingFailed

        init_dir = adapter_dir(ctx.blobs, request.initial_adapter_hash, self.home / "adapters")
        trainer = LocalTrainer(self.home / "train")
        inputs = {"model_dir": str(model_dir), "init_adapter_dir": str(init_dir) if init_dir else None,
                  "data_path": str(data)}
        try:
            manifest = trainer.run_effect(spec, inputs, ctx)
        except TrainingFailed as exc:
            raise EffectError(f"training job {spec.job_id[:12]} failed: {exc}") from None
        return manifest, manifest.adapter_dir(trainer.root / "jobs" / spec.job_id)

    def _train_on_modal(self, spec: Any, model_dir: Path | None, request: TrainRequest, data: Path,
                        ctx: EffectContext) -> tuple[Any, Path]:
        """Spawn on the deployed Modal app; the FunctionCall id is recorded at once, so a
        resumed run re-attaches to it. The base model goes to the Volume once, by hash."""
        from sia.train.modal_app import ModalTrainer, adapter_inputs, hub_model_config, upload_model

        trainer = ModalTrainer()
        init_dir = adapter_dir(ctx.blobs, request.initial_adapter_hash, self.home / "adapters")
        inputs: dict[str, Any] = {"rollouts_jsonl": data.read_text(encoding="utf-8")}
        if init_dir is not None:
            inputs["init_adapter_files"] = adapter_inputs(init_dir)
        try:
            if model_dir is not None:
                inputs["model_dir"] = upload_model(model_dir, spec.base_model_hash)
                model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            else:
                revision = getattr(self.model, "revision", None)
                inputs["model_revision"] = revision
                model_config = hub_model_config(spec.base_model_id, revision) if revision else None
            manifest = trainer.run_effect(spec, inputs, ctx, model_config=model_config)
            fetched = trainer.fetch_adapter(manifest, self.home / "train" / "modal" / spec.job_id)
        except Exception as exc:  # Modal's errors name what went wrong; record them as the effect's
            raise EffectError(f"Modal training job {spec.job_id[:12]} failed: {exc}") from None
        return manifest, fetched
