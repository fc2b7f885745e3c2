"""The embedded tiny model: offline, deterministic, cached, loadable by the local backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from sia.target.local import LocalBackend  # noqa: E402
from sia.train.rollouts import Rollout, read_rollouts, write_rollouts  # noqa: E402
from sia.train.tiny import (  # noqa: E402
    CJK_CONFIG,
    TinyConfig,
    build_tiny_model,
    build_tokenizer,
    config_for,
    model_hash,
    tokenizer_kind,
)

CORPUS = ["word: apple answer: fruit", "word: cat answer: animal", "word: red answer: color"]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_build_is_byte_identical_and_cached(tmp_path: Path) -> None:
    first = build_tiny_model(CORPUS, seed=3, root=tmp_path / "a", pretrain_steps=20)
    second = build_tiny_model(CORPUS, seed=3, root=tmp_path / "b", pretrain_steps=20)
    assert first.model_hash == second.model_hash and first.path.name == first.model_hash
    assert _files(first.path) == _files(second.path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_files(first.path))
    start = time.monotonic()
    again = build_tiny_model(CORPUS, seed=3, root=tmp_path / "a", pretrain_steps=20)
    assert again == first and time.monotonic() - start < 0.5
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.model_hash]
    other = build_tiny_model(CORPUS, seed=4, root=tmp_path / "a", pretrain_steps=20)
    assert other.model_hash != first.model_hash


def test_loads_in_local_backend_and_decodes_with_spaces(tmp_path: Path) -> None:
    model = build_tiny_model(CORPUS, seed=0, root=tmp_path, pretrain_steps=60)
    backend = LocalBackend(model.path)
    tokenizer = backend.tokenizer
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    ids = tokenizer("word: apple answer:")["input_ids"]
    assert tokenizer.decode(ids) == "word : apple answer :"
    assert tokenizer("word: kiwi")["input_ids"][-1] == tokenizer.unk_token_id
    sample = backend.sample("word: apple answer:", max_tokens=3, temperature=0.0, n=1, seed=0)[0]
    assert sample.finish_reason == "stop" and len(sample.text.split()) == 1


def test_rollouts_jsonl_round_trip(tmp_path: Path) -> None:
    rollouts = [Rollout(prompt_ids=[1, 2], completion_ids=[3, 4], reward=1.0, group="g", logprobs=[-0.1, -0.2]),
                Rollout(prompt_ids=[1, 2], completion_ids=[], reward=0.0, group="g")]
    write_rollouts(tmp_path / "r.jsonl", rollouts)
    assert read_rollouts(tmp_path / "r.jsonl") == rollouts
    with pytest.raises(ValueError):
        Rollout(prompt_ids=[1], completion_ids=[2], reward=0.0, group="g", logprobs=[])


def test_cjk_corpus_gets_one_token_per_character_and_unseen_ones_are_unk(tmp_path: Path) -> None:
    corpus = ["事实:被告人盗走手机。\n[罪名]盗窃<eoa>", "事实:被告人骗取财物 VIVO 手机。\n[罪名]诈骗<eoa>"]
    assert tokenizer_kind(corpus) == "char" and tokenizer_kind(CORPUS) == "word"
    assert config_for(corpus) == CJK_CONFIG and config_for(CORPUS) == TinyConfig()
    model = build_tiny_model(corpus, seed=0, root=tmp_path, pretrain_steps=2)
    built = json.loads((model.path / "config.json").read_text())
    assert (built["hidden_size"], built["max_position_embeddings"]) == (128, 512)
    tokenizer = LocalBackend(model.path).tokenizer
    ids = tokenizer("被告人盗走 VIVO手机")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["被", "告", "人", "盗", "走", " ", "VIVO", "手", "机"]
    assert tokenizer.decode(ids) == "被告人盗走 VIVO手机"
    assert tokenizer("张某盗窃")["input_ids"][0] == tokenizer.unk_token_id
    assert tokenizer("张某盗窃")["input_ids"][1:] == tokenizer("某盗窃")["input_ids"]


def test_tokenizer_choice_is_validated_and_hashed_only_when_explicit() -> None:
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        TinyConfig(tokenizer="bpe")
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        tokenizer_kind(CORPUS, "bpe")
    assert tokenizer_kind(CORPUS, "char") == "char"
    with pytest.raises(ValueError, match="word or char"):
        build_tokenizer(CORPUS, kind="bpe")
    auto = model_hash(CORPUS, 0, TinyConfig(), 20)
    # the hash of this build before the field existed: cached wordcat models stay valid
    assert auto == "ed22957c1f1a38573829b5d6c7c9ebad4334d1a1b4d0eebe4233d66924eedf3e"
    assert model_hash(CORPUS, 0, TinyConfig(tokenizer="word"), 20) != auto
    assert model_hash(CORPUS, 0, TinyConfig(tokenizer="char"), 20) != auto
