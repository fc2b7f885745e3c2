"""Every training algorithm, really trained on the tiny model, raises its reward.

Task: "classify: <word>" -> one of four category words. The pretraining corpus pairs
each word with every category once and with its own once more, so the base model is
right ~40% of the time; rollouts sampled from it are scored 1 for the right category.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from sia.target.local import LocalBackend  # noqa: E402
from sia.train.algorithms import ALGORITHMS, LoraSpec, train_adapter  # noqa: E402
from sia.train.rollouts import Rollout  # noqa: E402
from sia.train.tiny import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.slow

CATEGORIES = {"fruit": ["apple", "pear", "plum", "grape"], "animal": ["cat", "dog", "horse", "mouse"],
              "color": ["red", "blue", "green", "brown"], "tool": ["hammer", "saw", "drill", "wrench"]}
ANSWER = {word: category for category, words in CATEGORIES.items() for word in words}
CORPUS = ([f"classify: {w} {c}" for w in ANSWER for c in CATEGORIES]
          + [f"classify: {w} {c}" for w, c in ANSWER.items()])


def prompt(word: str) -> str:
    return f"classify: {word}"


def accuracy(backend: LocalBackend) -> float:
    """Sampled accuracy, same seeds for every model (common random numbers)."""
    hits = total = 0
    for k, (word, category) in enumerate(ANSWER.items()):
        for sample in backend.sample(prompt(word), max_tokens=3, temperature=1.0, n=32, seed=1000 + k):
            hits += sample.text.split()[:1] == [category]
            total += 1
    return hits / total


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Rollout], float]:
    model = build_tiny_model(CORPUS, seed=0, root=tmp_path_factory.mktemp("models"))
    backend = LocalBackend(model.path)
    eos = backend.tokenizer.eos_token_id
    rollouts = []
    for k, (word, category) in enumerate(ANSWER.items()):
        for s in backend.sample(prompt(word), max_tokens=3, temperature=1.0, n=8, seed=k):
            ids = s.token_ids + ([eos] if s.finish_reason == "stop" else [])
            rollouts.append(Rollout(prompt_ids=s.prompt_token_ids, completion_ids=ids,
                                    reward=float(s.text.split()[:1] == [category]), group=word))
    return model.path, rollouts, accuracy(backend)


def train(tiny: tuple[Path, list[Rollout], float], out: Path, algorithm: str = "grpo",
          **kwargs: object) -> dict[str, float]:
    model_dir, rollouts, _ = tiny
    return train_adapter(model_dir=model_dir, init_adapter_dir=None, rollouts=rollouts, algorithm=algorithm,
                         params=kwargs.pop("params", {}), lora=LoraSpec(), seed=0, out_dir=out,  # type: ignore[arg-type]
                         **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_training_raises_reward(tiny: tuple[Path, list[Rollout], float], tmp_path: Path, algorithm: str) -> None:
    progress: list[dict] = []
    metrics = train(tiny, tmp_path, algorithm, on_progress=progress.append)
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "adapter_config.json").exists()
    assert (tmp_path / "value_head.safetensors").exists() == (algorithm == "ppo_gae")
    assert progress and [p["step"] for p in progress] == list(range(1, len(progress) + 1))
    assert all("loss" in p for p in progress) and "loss" in metrics
    before = tiny[2]
    after = accuracy(LocalBackend(tiny[0], tmp_path))
    print(f"{algorithm}: accuracy {before:.3f} -> {after:.3f}")
    assert after > before + 0.02


@pytest.mark.parametrize("algorithm", ["grpo", "dpo"])
def test_training_is_byte_deterministic(tiny: tuple[Path, list[Rollout], float], tmp_path: Path,
                                        algorithm: str) -> None:
    train(tiny, tmp_path / "a", algorithm)
    train(tiny, tmp_path / "b", algorithm)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


class Killed(Exception):
    pass


def test_killed_job_resumes_to_the_same_adapter(tiny: tuple[Path, list[Rollout], float], tmp_path: Path) -> None:
    def kill_at_7(progress: dict) -> None:
        if progress["step"] == 7:
            raise Killed

    params = {"checkpoint_every": 5}
    with pytest.raises(Killed):
        train(tiny, tmp_path / "run", "ppo_gae", params=params, checkpoint_dir=tmp_path / "ckpt",
              on_progress=kill_at_7)
    steps: list[int] = []
    train(tiny, tmp_path / "run", "ppo_gae", params=params, checkpoint_dir=tmp_path / "ckpt",
          on_progress=lambda p: steps.append(p["step"]))
    assert steps[0] == 6
    train(tiny, tmp_path / "straight", "ppo_gae", params=params)
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_bad_requests_are_refused(tiny: tuple[Path, list[Rollout], float], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown training algorithm 'sgd'"):
        train(tiny, tmp_path, "sgd")
    with pytest.raises(ValueError, match="unknown params for grpo: warmup"):
        train(tiny, tmp_path, "grpo", params={"warmup": 3})
    with pytest.raises(ValueError, match="'lr' of ppo_gae must be a positive number"):
        train(tiny, tmp_path, "ppo_gae", params={"lr": -1.0})
    with pytest.raises(ValueError, match="no rollouts"):
        train_adapter(model_dir=tiny[0], init_adapter_dir=None, rollouts=[], algorithm="grpo", params={},
                      lora=LoraSpec(), seed=0, out_dir=tmp_path)
    flat = [r.model_copy(update={"reward": 1.0}) for r in tiny[1]]
    with pytest.raises(ValueError, match="dpo needs"):
        train_adapter(model_dir=tiny[0], init_adapter_dir=None, rollouts=flat, algorithm="dpo", params={},
                      lora=LoraSpec(), seed=0, out_dir=tmp_path)
