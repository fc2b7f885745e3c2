"""The local target backend on a tiny random Llama: token ids, logprobs, seeds, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sia.target.local import LocalBackend  # noqa: E402

WORDS = "i saw a cat dog apple red tool today there is near the house animal fruit color".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS, ":", "\n"])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(root)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, eos_token_id=1, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(root)
    return root


def test_samples_carry_token_ids_and_logprobs(model_dir: Path) -> None:
    backend = LocalBackend(model_dir)
    samples = backend.sample("i saw a cat", max_tokens=4, temperature=1.0, n=3, seed=7)
    assert len(samples) == 3
    for sample in samples:
        assert sample.prompt_token_ids == backend.tokenizer("i saw a cat")["input_ids"]
        assert len(sample.token_ids) == len(sample.logprobs) <= 4
        assert all(p <= 0.0 for p in sample.logprobs)
        assert sample.text == backend.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
    again = backend.sample("i saw a cat", max_tokens=4, temperature=1.0, n=3, seed=7)
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]


def test_greedy_is_deterministic_and_stop_strings_cut(model_dir: Path) -> None:
    backend = LocalBackend(model_dir)
    first = backend.sample("there is a", max_tokens=5, temperature=0.0, n=2, seed=1)
    second = backend.sample("there is a", max_tokens=5, temperature=0.0, n=1, seed=99)
    assert first[0].token_ids == first[1].token_ids == second[0].token_ids
    word = first[0].text.split()[0] if first[0].text else None
    if word:
        cut = backend.sample("there is a", max_tokens=5, temperature=0.0, n=1, seed=1, stop=[word])[0]
        assert word not in cut.text and cut.finish_reason == "stop"


def test_an_adapter_is_loaded_on_top_of_the_base(model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = LocalBackend(model_dir).sample("i saw a", max_tokens=3, temperature=0.0, n=1, seed=0)[0]
    adapted = LocalBackend(model_dir, tmp_path / "adapter")
    assert adapted.name.startswith(model_dir.name + "+")
    tuned = adapted.sample("i saw a", max_tokens=3, temperature=0.0, n=1, seed=0)[0]
    assert tuned.logprobs != plain.logprobs
