"""Learning signals at realistic sizes: completions of >= 128 sampled tokens with the
sampler's logprobs, in groups of 2 and of 16, on an untrained tiny Llama built in-process.

Each test pins one way an update used to learn from the wrong signal: the ratio to the
sampler at step 0 (temperature, top-p, the eos logprob), PPO's critic, the entropic
normaliser, DPO's pair order, defaults for real models, chunked anchor passes, and
updates that change nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from sia.core.effect_models import EpisodeRef  # noqa: E402
from sia.core.reward_shape import classify_rewards  # noqa: E402
from sia.effects.train import build_rollouts, reward_groups  # noqa: E402
from sia.harness.backends import SamplerBackend, SamplingParams  # noqa: E402
from sia.harness.gateway import ModelCall  # noqa: E402
from sia.store.blobs import FileBlobStore  # noqa: E402
from sia.target.local import LocalBackend  # noqa: E402
from sia.train.algorithms import (  # noqa: E402
    LoraSpec,
    _load_model,
    model_scale,
    no_signal_reason,
    resolve_params,
    train_adapter,
)
from sia.train.policy_gradient import (  # noqa: E402
    VALUE_HEAD_FILE,
    ValueHead,
    _ppo_fixed,
    behaviour_logprobs,
    initial_logprobs,
)
from sia.train.preference import preference_pairs  # noqa: E402
from sia.train.rollouts import Rollout  # noqa: E402
from sia.train.tiny import TinyConfig, build_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = [f"w{i}" for i in range(400)]
LONG = 128
"""Minimum completion length every test here trains on."""


class Scored:
    """A task's reward: the share of a completion's words that are in the first quarter of
    the vocabulary (continuous, in [0, 1])."""

    good = set(WORDS[:100])

    def reward(self, sample_id: str, text: str | None) -> float:
        words = (text or "").split()
        return sum(w in self.good for w in words) / len(words) if words else 0.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [" ".join(WORDS[i: i + 20]) for i in range(0, len(WORDS), 20)]
    config = TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=256)
    return build_tiny_model(corpus, seed=0, root=tmp_path_factory.mktemp("models"), pretrain_steps=0,
                            config=config).path


def recorded(model_dir: Path, blobs: FileBlobStore, *, group: int, prompts: int, temperature: float,
             top_p: float, seed: int = 0) -> tuple[list[EpisodeRef], list[Rollout]]:
    """An episode through the real path (local sampler → recorded call → trajectory blob) and
    the rollouts `build_rollouts` makes of it."""
    backend = LocalBackend(model_dir)
    texts = [" ".join(WORDS[3 * k: 3 * k + 3]) for k in range(prompts)]
    params = SamplingParams(max_tokens=LONG + 40, temperature=temperature, top_p=top_p, n=2 * group, seed=seed)
    generations = SamplerBackend(backend).generate(texts, params)
    call = ModelCall(index=0, endpoint="completions", status=200, prompts=texts, params=params,
                     generations=generations)
    trajectory = blobs.put_text(json.dumps({"calls": [call.model_dump(mode="json")]}))
    episodes = [EpisodeRef(episode_id="e", sample_id="s", trajectory_hash=trajectory)]
    rollouts = build_rollouts(episodes, blobs, Scored(), backend.tokenizer.eos_token_id)  # type: ignore[arg-type]
    return episodes, rollouts


def sampled(model_dir: Path, blobs: FileBlobStore, **kwargs: Any) -> list[Rollout]:
    return recorded(model_dir, blobs, **kwargs)[1]


def long_rollouts(rollouts: list[Rollout], group: int) -> list[Rollout]:
    """Groups of `group` completions of >= LONG tokens: the first that long of each prompt's
    samples (`sampled` draws twice as many as needed; an untrained model stops at random)."""
    by_group: dict[str, list[Rollout]] = {}
    for r in rollouts:
        if len(r.completion_ids) >= LONG:
            by_group.setdefault(r.group, []).append(r)
    kept = [r for g in by_group.values() if len(g) >= group for r in g[:group]]
    assert kept, "no group of long completions was sampled"
    return kept


def peft_model(model_dir: Path, seed: int = 0):  # type: ignore[no-untyped-def]
    return _load_model(model_dir, None, LoraSpec(rank=4, alpha=8), seed)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
@pytest.mark.parametrize("group", [2, 16])
def test_the_ratio_to_the_sampler_is_one_at_step_zero(model_dir: Path, tmp_path: Path, group: int,
                                                      temperature: float, top_p: float) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=group, prompts=3, temperature=temperature,
                                     top_p=top_p), group)
    assert all(r.temperature == temperature and r.top_p == top_p for r in rollouts)
    stopped = [r for r in rollouts if r.logprobs and r.logprobs[-1] is None]
    assert stopped, "no sample ended at the eos"
    model = peft_model(model_dir)
    current, full = initial_logprobs(model, rollouts, pad_id=0, chunk=8)
    old, gap = behaviour_logprobs(rollouts, full, current)
    ratio = torch.exp(current - old)[full.targets]
    assert ratio.numel() >= LONG * len(rollouts)
    # recorded logprobs are rounded to 1e-6; anything else (temperature, top-p, an eos at 0.0) is far off
    assert float((ratio - 1).abs().max()) < 1e-4 and gap < 1e-5
    for r in stopped:  # the eos is scored, not taken as log 1 = 0
        b = rollouts.index(r)
        assert float(old[b, full.targets[b].nonzero().flatten()[-1]]) < -1.0


@pytest.mark.parametrize("group", [2, 16])
def test_ppo_fits_its_critic_and_its_advantages_use_it(model_dir: Path, tmp_path: Path, group: int) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=group, prompts=4, temperature=1.0, top_p=1.0),
                             group)
    params = resolve_params("ppo_gae", {})
    model = peft_model(model_dir)
    fitted = _ppo_fixed(model, ValueHead(model.config.hidden_size), rollouts, params, pad_id=0)
    frozen = _ppo_fixed(model, ValueHead(model.config.hidden_size), rollouts, {**params, "fit_critic": False},
                        pad_id=0)
    assert float(fitted["stat_value_loss_after_fit"]) < 0.5 * float(fitted["stat_value_loss_before_fit"])
    mask = fitted["targets"]
    assert not torch.allclose(fitted["advantages"][mask], frozen["advantages"][mask], atol=1e-3)
    # with V = 0, gamma 1 and lambda 0.95 the first token's raw advantage is 0.95^(T-1) r:
    # ~1e-3 of the last one's at T = 128; the fitted critic's TD errors reach every token
    first = [int(mask[b].nonzero()[0]) for b in range(len(rollouts))]
    early_frozen = frozen["advantages"][range(len(rollouts)), first]
    assert float(frozen["old_values"].abs().max()) == 0.0
    assert float(fitted["old_values"][mask].abs().mean()) > 0.05
    assert float(early_frozen.abs().max()) < float(fitted["advantages"][range(len(rollouts)), first].abs().max())


def test_ppo_carries_its_value_head_to_the_next_update(model_dir: Path, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=16, prompts=2, temperature=1.0, top_p=1.0), 16)
    params = {"epochs": 1, "batch_size": 16}
    first = train_adapter(model_dir=model_dir, init_adapter_dir=None, rollouts=rollouts, algorithm="ppo_gae",
                          params=params, lora=LoraSpec(rank=4, alpha=8), seed=0, out_dir=tmp_path / "a")
    assert first["value_head_carried"] == 0.0 and (tmp_path / "a" / VALUE_HEAD_FILE).is_file()
    second = train_adapter(model_dir=model_dir, init_adapter_dir=tmp_path / "a", rollouts=rollouts,
                           algorithm="ppo_gae", params=params, lora=LoraSpec(), seed=0, out_dir=tmp_path / "b")
    assert second["value_head_carried"] == 1.0
    # the carried head already knows these returns: it starts far better than a zero head
    assert second["value_loss_before_fit"] < 0.5 * first["value_loss_before_fit"]


@pytest.mark.parametrize("group", [2, 16])
def test_entropic_trains_on_groups_with_two_rewards(model_dir: Path, tmp_path: Path, group: int) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=group, prompts=3, temperature=1.0, top_p=1.0),
                             group)
    # one success per group, as binary rewards: adaptive beta hits its cap for a group of two
    by_group: dict[str, int] = {}
    binary = []
    for r in rollouts:
        binary.append(r.model_copy(update={"reward": float(by_group.get(r.group, 0) == 0)}))
        by_group[r.group] = by_group.get(r.group, 0) + 1
    metrics = train_adapter(model_dir=model_dir, init_adapter_dir=None, rollouts=binary, algorithm="entropic",
                            params={"epochs": 1}, lora=LoraSpec(rank=4, alpha=8), seed=0, out_dir=tmp_path)
    assert math.isfinite(metrics["loss"]) and metrics["policy_unchanged"] == 0.0
    assert metrics["mean_beta"] == pytest.approx(64.0) or group == 16


def test_dpo_keeps_the_widest_reward_gaps_first() -> None:
    rollouts = [Rollout(prompt_ids=[1], completion_ids=[2 + i] * LONG, reward=float(i), group="g")
                for i in range(16)]
    pairs = preference_pairs(rollouts, max_pairs_per_group=3)
    gaps = [c.reward - r.reward for c, r in pairs]
    assert gaps == [15.0, 14.0, 14.0]
    assert preference_pairs(rollouts[:2], 1)[0][0].reward == 1.0


def test_defaults_follow_the_model_scale() -> None:
    tiny = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 4096}
    llama8b = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256}
    assert (model_scale(tiny), model_scale(llama8b), model_scale(None)) == ("tiny", "large", "large")
    for algorithm in ("ppo_gae", "grpo", "entropic", "reinforce_kl", "dpo", "best_of_n"):
        large = resolve_params(algorithm, {}, "large")
        assert large["lr"] <= 1e-4 and large["forward_batch_size"] <= 8
        assert resolve_params(algorithm, {}, "tiny")["lr"] >= 1e-3 > large["lr"]
    assert resolve_params("dpo", {}, "large")["lr"] == 5e-6
    assert resolve_params("grpo", {"lr": 3e-5}, "large")["lr"] == 3e-5
    with pytest.raises(ValueError, match="model scale"):
        resolve_params("grpo", {}, "huge")


def test_anchor_passes_run_in_chunks_with_the_same_result(model_dir: Path, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=16, prompts=2, temperature=1.0, top_p=1.0), 16)
    model = peft_model(model_dir)
    rows: list[int] = []
    hook = model.get_base_model().model.embed_tokens.register_forward_hook(
        lambda module, args, out: rows.append(int(args[0].shape[0])))
    try:
        chunked, _ = initial_logprobs(model, rollouts, pad_id=0, chunk=3)
    finally:
        hook.remove()
    assert rows and max(rows) == 3 and sum(rows) == len(rollouts)
    whole, full = initial_logprobs(model, rollouts, pad_id=0, chunk=len(rollouts))
    assert torch.allclose(chunked[full.targets], whole[full.targets], atol=1e-5)


@pytest.mark.parametrize("group", [2, 16])
def test_constant_groups_are_no_signal_and_an_update_without_one_changes_nothing(
        model_dir: Path, tmp_path: Path, group: int) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=group, prompts=2, temperature=1.0, top_p=1.0),
                             group)
    constant = [r.model_copy(update={"reward": 0.0}) for r in rollouts]
    for algorithm in ("grpo", "entropic", "reinforce_kl", "dpo", "ppo_gae", "best_of_n"):
        assert no_signal_reason(algorithm, constant, resolve_params(algorithm, {})), algorithm
        assert no_signal_reason(algorithm, rollouts, resolve_params(algorithm, {})) is None, algorithm
    assert classify_rewards([[0.0] * group] * 2).recommended_algorithm is None
    metrics = train_adapter(model_dir=model_dir, init_adapter_dir=None, rollouts=constant, algorithm="grpo",
                            params={"epochs": 1}, lora=LoraSpec(rank=4, alpha=8), seed=0, out_dir=tmp_path / "a")
    assert metrics["policy_unchanged"] == 1.0


def test_the_feedback_sees_the_rewards_the_trainer_sees(model_dir: Path, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    episodes, rollouts = recorded(model_dir, blobs, group=16, prompts=2, temperature=1.0, top_p=1.0)
    groups = reward_groups(episodes, blobs, Scored())  # type: ignore[arg-type]
    assert [len(g) for g in groups] == [32, 32]
    assert [r for g in groups for r in g] == [r.reward for r in rollouts]


def test_ppo_ignores_sampler_logprobs_of_another_distribution(model_dir: Path, tmp_path: Path) -> None:
    # vLLM's default logprobs-mode reports the distribution before temperature: recorded
    # logprobs that disagree with the sampling distribution must not anchor the ratio
    blobs = FileBlobStore(tmp_path / "blobs")
    rollouts = long_rollouts(sampled(model_dir, blobs, group=2, prompts=3, temperature=0.7, top_p=1.0), 2)
    raw = [r.model_copy(update={"logprobs": [None if p is None else p * 0.7 for p in r.logprobs or []]})
           for r in rollouts]
    model = peft_model(model_dir)
    params = resolve_params("ppo_gae", {})
    kept = _ppo_fixed(model, ValueHead(model.config.hidden_size), rollouts, params, pad_id=0)
    refused = _ppo_fixed(model, ValueHead(model.config.hidden_size), raw, params, pad_id=0)
    assert float(kept["stat_sampler_logprobs_used"]) == 1.0 and float(refused["stat_sampler_logprobs_used"]) == 0.0
    assert float(refused["stat_sampler_logprob_gap"]) > 0.5
    assert torch.allclose(refused["old_logp"], kept["old_logp"], atol=1e-4)


def test_the_sampling_distribution_keeps_the_recorded_token_and_scores_greedy_at_one() -> None:
    from sia.target.sampling import sampling_logprobs, scoring_temperature

    logits = torch.tensor([[4.0, 3.0, 0.0, -2.0]])
    nucleus = sampling_logprobs(logits, 1.0, 0.8)
    probs = torch.softmax(logits, dim=-1)[0]
    # the two most probable tokens carry 0.70 + 0.26 of the mass: the second crosses 0.8
    assert torch.isinf(nucleus[0, 2:]).all() and torch.allclose(nucleus[0, :2].exp().sum(), torch.tensor(1.0))
    assert float(nucleus[0, 0]) == pytest.approx(math.log(probs[0] / (probs[0] + probs[1])), abs=1e-6)
    kept = sampling_logprobs(logits, 1.0, 0.8, keep=torch.tensor([3]))
    assert math.isfinite(float(kept[0, 3])) and math.isinf(float(kept[0, 2]))
    assert scoring_temperature(0.0) == 1.0 and scoring_temperature(0.7) == 0.7
    assert torch.allclose(sampling_logprobs(logits, 0.5, 1.0), torch.log_softmax(logits / 0.5, dim=-1))


def test_the_recorded_stop_token_is_appended_unscored_else_the_eos(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    stopped = [{"text": "w1", "prompt_token_ids": [3], "token_ids": [4], "logprobs": [-0.5],
                "finish_reason": "stop", "stop_token_id": 9},
               {"text": "w2", "prompt_token_ids": [3], "token_ids": [5], "logprobs": [-0.7],
                "finish_reason": "stop"},
               {"text": "w3", "prompt_token_ids": [3], "token_ids": [6], "logprobs": [-0.9],
                "finish_reason": "length"}]
    call = {"index": 0, "endpoint": "completions", "status": 200, "prompts": ["p"],
            "params": {"temperature": 0.5, "top_p": 0.9, "n": 3}, "generations": stopped}
    episodes = [EpisodeRef(episode_id="e", sample_id="s",
                           trajectory_hash=blobs.put_text(json.dumps({"calls": [call]})))]
    rollouts = build_rollouts(episodes, blobs, Scored(), eos_id=2)  # type: ignore[arg-type]
    assert [r.completion_ids for r in rollouts] == [[4, 9], [5, 2], [6]]
    assert [r.logprobs for r in rollouts] == [[-0.5, None], [-0.7, None], [-0.9]]
    assert {(r.temperature, r.top_p) for r in rollouts} == {(0.5, 0.9)}


def test_the_feedback_counts_completions_that_stopped_at_once_as_the_trainer_does(tmp_path: Path) -> None:
    # an untrained harness's model often ends at once: no tokens, finish "stop"; the trainer
    # learns from its stop token, so the reward shape must see it too
    blobs = FileBlobStore(tmp_path / "blobs")
    empty = [{"text": "", "prompt_token_ids": [3], "token_ids": [], "logprobs": [], "finish_reason": "stop"}] * 2
    call = {"index": 0, "endpoint": "completions", "status": 200, "prompts": ["p"],
            "params": {"n": 2}, "generations": empty}
    episodes = [EpisodeRef(episode_id="e", sample_id="s",
                           trajectory_hash=blobs.put_text(json.dumps({"calls": [call]})))]
    assert [len(r.completion_ids) for r in build_rollouts(episodes, blobs, Scored(), eos_id=2)] == [1, 1]  # type: ignore[arg-type]
    assert reward_groups(episodes, blobs, Scored()) == [[0.0, 0.0]]  # type: ignore[arg-type]
