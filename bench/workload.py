"""A realistic, valid sia event log of any length, for benchmarks.

Loop-shaped like a real run: per generation, GenerationStarted, then for each of
`episodes` dev samples an EffectRequested / EffectCompleted / EpisodeRecorded triple,
then evaluation, completion, a feedback decision and a harness edit. Payloads are padded
to 0.5-2 KB (prompts, completions, predictions), and the whole log folds without error.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from sia.core.decide import effect_id_for
from sia.core.events.canonical import content_hash
from sia.core.events.types import (
    BaseEvent,
    EffectCompleted,
    EffectRequested,
    EpisodeRecorded,
    EvaluationRecorded,
    FeedbackDecided,
    GenerationCompleted,
    GenerationStarted,
    HarnessEdited,
    HarnessProposed,
    RunConfig,
    RunCreated,
    TaskIdentity,
    Usage,
)

WORDS = "the agent model harness reward trajectory sample answer prompt token gradient".split()


def text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def events(count: int, episodes: int = 200, seed: int = 0) -> Iterator[BaseEvent]:
    """Exactly `count` events of a valid run (the last generation may be cut short)."""
    rng = random.Random(seed)
    dev_ids = tuple(f"s{i:04d}" for i in range(episodes))
    emitted = 0

    def budgeted(stream: Iterator[BaseEvent]) -> Iterator[BaseEvent]:
        nonlocal emitted
        for event in stream:
            if emitted == count:
                return
            emitted += 1
            yield event

    yield from budgeted(iter([RunCreated(
        config=RunConfig(task="bench", max_generations=10**6, patience=10**6),
        task=TaskIdentity(name="bench", task_hash=content_hash("bench"), dev_ids=dev_ids))]))
    harness = content_hash("harness-0")
    meta = {"task": "bench", "attempt": 1, "seed": 1}
    meta_id = effect_id_for("meta", content_hash(meta))
    yield from budgeted(iter([
        EffectRequested(effect_id=meta_id, kind="meta", request=meta, request_hash=content_hash(meta)),
        EffectCompleted(effect_id=meta_id, kind="meta",
                        result={"harness_hash": harness, "valid": True, "problems": []}),
        HarnessProposed(effect_id=meta_id, harness_hash=harness, valid=True),
    ]))
    generation = 0
    while emitted < count:
        yield from budgeted(_generation(rng, generation, dev_ids, harness))
        harness = content_hash(f"harness-{generation + 1}")
        generation += 1


def _generation(rng: random.Random, g: int, dev_ids: tuple[str, ...], harness: str) -> Iterator[BaseEvent]:
    yield GenerationStarted(generation=g, harness_hash=harness, adapter_hash=None)
    rewards = []
    for sample in dev_ids:
        request = {"generation": g, "sample_id": sample, "harness_hash": harness,
                   "prompt": text(rng, rng.randint(300, 900)), "seed": rng.getrandbits(48)}
        request_hash = content_hash(request)
        effect_id = effect_id_for("episode", request_hash)
        yield EffectRequested(effect_id=effect_id, kind="episode", request=request,
                              request_hash=request_hash)
        prediction = text(rng, rng.randint(200, 900))
        yield EffectCompleted(effect_id=effect_id, kind="episode",
                              result={"status": "ok", "prediction": prediction,
                                      "trajectory_hash": content_hash(prediction)},
                              usage=Usage(tokens_in=300, tokens_out=120, wall_s=0.4))
        yield EpisodeRecorded(generation=g, episode_id=effect_id, sample_id=sample, status="ok",
                              prediction=prediction, trajectory_hash=content_hash(prediction))
        rewards.append(float(rng.random() < 0.5))
    score = sum(rewards) / len(rewards)
    yield EvaluationRecorded(generation=g, score=score, rewards=tuple(rewards), n=len(rewards),
                             n_answered=len(rewards))
    yield GenerationCompleted(generation=g, dev_score=score, best_generation=0)
    yield FeedbackDecided(generation=g, action="edit_harness", rationale=text(rng, 400),
                          harness_hash=content_hash(f"harness-{g + 1}"))
    yield HarnessEdited(generation=g, from_hash=harness, to_hash=content_hash(f"harness-{g + 1}"))


def record_run(store: Any, encoded: list[Any], run_id: str = "bench") -> Any:
    """Append encoded workload events as one run, 1000 per commit, saving folded-state
    snapshots as the runtime does; returns the final state."""
    from sia.core.events.mapper import MAPPER
    from sia.core.reducers.loop import evolve
    from sia.core.reducers.state import LoopState
    from sia.runtime.loop import SNAPSHOT_EVERY, save_snapshot

    stored = store.create_run(run_id, encoded[:1])
    state = LoopState()
    for start in range(1, len(encoded), 1000):
        batch = store.append(run_id, encoded[start:start + 1000], expected_last_seq=start)
        for event in [*stored, *batch]:
            state = evolve(state, MAPPER.decode(event))
            if state.seq % SNAPSHOT_EVERY == 0:
                save_snapshot(store, run_id, state)
        stored = []
    return state
