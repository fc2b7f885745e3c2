"""The embedded target model: a tiny Llama built offline from a corpus.

sia must run (and its tests must train real adapters) on a machine with no network and
a slow CPU, so the default target is built here rather than downloaded: a tokenizer over
the corpus and a small Llama pretrained for a few hundred steps, enough to learn the
corpus *format* (e.g. "answer:" is followed by one word and `<eos>`). The tokenizer is
word-level, or character-level for text with CJK characters (Chinese has no spaces, so
a "word" would be a whole clause and almost every clause of a test case would be <unk>).
The build is a pure function of its inputs, cached under the hash of those inputs,
and byte-identical when repeated.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from sia.core.events.canonical import content_hash
from sia.train import deterministic_torch

FORMAT_VERSION = 1
"""Bump when the build procedure changes, so cached models are not reused across it."""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")

TOKENIZER_KINDS = ("auto", "word", "char")

CJK_CHARACTER = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
"""CJK unified ideographs (with extensions A to G) and compatibility ideographs."""

CHAR_PIECE = r"[A-Za-z]+|[^A-Za-z]"
"""A character-level piece: a run of ASCII letters, else any one character (whitespace too,
so that decoding the pieces back to back restores the text)."""


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and pretraining hyper-parameters (part of the model hash)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_positions: int = 128
    learning_rate: float = 3e-3
    batch_size: int = 64
    tokens_per_step: int = 2048
    """Pretraining batches shrink below `batch_size` so long documents cost no more per step."""
    max_vocab: int = 4096
    """Most frequent words kept (the rest are <unk>): bounds the output layer, which is
    what pretraining on a large-vocabulary corpus (Chinese legal text) spends its time on."""
    tokenizer: str = "auto"
    """"word": whitespace- and punctuation-separated words, decoded joined by spaces;
    "char": every character its own token except runs of ASCII letters, decoded exactly;
    "auto": "char" when the corpus has a CJK character, else "word"."""

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {self.tokenizer!r}")


CJK_CONFIG = TinyConfig(hidden_size=128, intermediate_size=256, max_positions=512, tokenizer="char")
"""The size for Chinese text (LawBench 3-3): a character per token makes a case ~450 tokens
(instruction + median fact); 512 positions hold 63 % of the 500 cases' instruction and fact
whole (a harness must cut the rest). Measured on the
LawBench corpus (401 documents, a vocabulary of 2,675), 200 steps on one thread: 44 s of
CPU (122 s wall with the 2-core machine at load 7); the default size (hidden 64, 128
positions) and hidden 128 with 256 positions took 59 s of CPU together."""


def config_for(corpus: list[str]) -> TinyConfig:
    """The default configuration for `corpus`: `CJK_CONFIG` for text with CJK characters."""
    return CJK_CONFIG if tokenizer_kind(corpus) == "char" else TinyConfig()


@dataclass(frozen=True)
class TinyModel:
    """A built model directory, loadable with `AutoModelForCausalLM` / `AutoTokenizer`."""

    path: Path
    model_hash: str
    model_id: str


def tokenizer_kind(corpus: list[str], requested: str = "auto") -> str:
    """The tokenizer `requested` resolves to for `corpus` ("word" or "char")."""
    if requested not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "char" if any(CJK_CHARACTER.search(line) for line in corpus) else "word"


def _pre_tokenizer(kind: str):  # type: ignore[no-untyped-def]
    from tokenizers import Regex, pre_tokenizers

    if kind == "char":
        return pre_tokenizers.Split(Regex(CHAR_PIECE), behavior="isolated")
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def build_tokenizer(corpus: list[str], max_vocab: int | None = None,  # type: ignore[no-untyped-def]
                    kind: str = "word"):
    """A word- or character-level `PreTrainedTokenizerFast`; its vocabulary is the corpus'
    sorted pieces (the `max_vocab` most frequent), anything else is <unk>.

    Word level sets no decoder, so decoding joins tokens with single spaces; character level
    fuses them, so decoding gives back the text. No post-processor, so `tokenizer(prompt)`
    adds no special tokens (the sampler continues the prompt).
    """
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if kind not in ("word", "char"):
        raise ValueError(f"tokenizer kind must be word or char, got {kind!r}")
    splitter = _pre_tokenizer(kind)
    counts = Counter(piece for line in corpus for piece, _ in splitter.pre_tokenize_str(line)
                     if piece not in SPECIAL_TOKENS)
    kept = sorted(counts, key=lambda word: (-counts[word], word))[:max_vocab]
    words = sorted(kept)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = splitter
    if kind == "char":
        core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False)


def model_hash(corpus: list[str], seed: int, config: TinyConfig, pretrain_steps: int) -> str:
    """"auto" is a function of the corpus, which is hashed, so it is left out: models built
    before the `tokenizer` field existed keep their hash (and their cache entry)."""
    fields = asdict(config)
    if config.tokenizer == "auto":
        del fields["tokenizer"]
    return content_hash({"corpus": list(corpus), "seed": seed, "config": fields,
                         "pretrain_steps": pretrain_steps, "format": FORMAT_VERSION})


def build_tiny_model(corpus: list[str], *, seed: int, root: Path, pretrain_steps: int = 200,
                     config: TinyConfig | None = None) -> TinyModel:
    """Build (or reuse) the tiny model for `corpus` under `root/<model_hash>/`; without a
    `config`, the corpus' default (`config_for`)."""
    if not corpus:
        raise ValueError("the corpus is empty: the tiny model needs at least one document")
    config = config_for(corpus) if config is None else config
    if pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be >= 0, got {pretrain_steps}")
    digest = model_hash(corpus, seed, config, pretrain_steps)
    model = TinyModel(path=Path(root) / digest, model_hash=digest, model_id=f"tiny-{digest[:12]}")
    if (model.path / "config.json").exists():
        return model
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    try:
        _build_into(staging, corpus, seed, pretrain_steps, config)
        try:
            os.rename(staging, model.path)
        except OSError:
            if not (model.path / "config.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return model


def _build_into(out: Path, corpus: list[str], seed: int, steps: int, config: TinyConfig) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(corpus, config.max_vocab, tokenizer_kind(corpus, config.tokenizer))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    documents = [tokenizer(line)["input_ids"][: config.max_positions - 1] + [eos] for line in corpus]
    with deterministic_torch(seed):
        llama = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
            max_position_embeddings=config.max_positions, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
        model = LlamaForCausalLM(llama)
        _pretrain(model, documents, pad, steps, config, seed)
        model.generation_config.pad_token_id = pad
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _pretrain(model, documents: list[list[int]], pad: int, steps: int,  # type: ignore[no-untyped-def]
              config: TinyConfig, seed: int) -> None:
    """Causal-LM training on whole documents, in seeded shuffled epochs (every document is
    seen equally often: with a small corpus, sampling with replacement is too noisy for
    the model to pick up which answer goes with which input)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    longest = min(config.max_positions, max(len(doc) for doc in documents))
    size = min(config.batch_size, len(documents), max(1, config.tokens_per_step // longest))
    order: list[int] = []
    model.train()
    progress = logging.getLogger("sia.progress")  # the CLI renders these records; no import of it
    for step in range(steps):
        if len(order) < size:
            order += torch.randperm(len(documents), generator=generator).tolist()
        picks, order = order[:size], order[size:]
        batch = [documents[i][: config.max_positions] for i in picks]
        width = max(len(doc) for doc in batch)
        ids = torch.tensor([doc + [pad] * (width - len(doc)) for doc in batch])
        mask = torch.tensor([[1] * len(doc) + [0] * (width - len(doc)) for doc in batch])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.info("build", extra={"phase": "build tiny model", "step": step + 1,
                                      "total": steps, "loss": loss.item()})
    model.eval()
