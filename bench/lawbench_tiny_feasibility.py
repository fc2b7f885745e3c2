"""Can the embedded tiny model (character level) learn LawBench 3-3 from its 300 train cases?

    python bench/lawbench_tiny_feasibility.py [--seeds 1] [--hidden 128 --layers 2 --heads 4
        --intermediate 256 --positions 256 --steps 600 --fact-chars 200]

A feasibility measurement, not part of the loop: it tells whether training weights could
plausibly beat the TF-IDF baseline (`lawbench_baselines.py`) on the same 100 test cases
(the lawbench task's split for each seed). Every case is laid out in LawBench's answer
format: prompt `<fact>\\n[罪名]`, answer `<charge>[;<charge>]<eoa>`, where `<fact>` is the
first `--fact-chars` characters of the fact description (the model's context is
`--positions` characters; LawBench's instruction is left out, being the same for every case
it would only spend context). Two models per seed, built by `sia.train.tiny`:

- labelled: pretrained on the 300 train cases *with* their answers;
- base: pretrained on the 300 train facts alone (what sia builds today: public text, no labels);
- sft: the base model, then every weight fine-tuned on the 300 train cases with the loss on
  the answer tokens only (`--sft-steps` steps of 16 cases, AdamW at `--sft-lr`): what
  training weights in the loop can do at best with these labels (a LoRA adapter trains a
  subset of what this trains).

Each greedy-decodes the answer of every test prompt (at most `--max-new` tokens, stopping at
`<eoa>`), scored with LawBench's official rule. Build and generation times are wall clock on
this machine (builds run single-threaded, as `sia.train.tiny` does). Writes
bench/results/lawbench_tiny_feasibility.json (one entry per configuration, appended).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lawbench_baselines import DATA, OPTIONS_FILE, append_entry, evaluate, seeded_split  # noqa: E402

from sia.tasks.lawbench import Case, load_cases, load_charge_list  # noqa: E402
from sia.train.tiny import TinyConfig, build_tiny_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "lawbench_tiny_feasibility.json"
ANSWER_OPEN, ANSWER_CLOSE = "[罪名]", "<eoa>"


def prompt(case: Case, fact_chars: int) -> str:
    return case.question.strip()[:fact_chars] + "\n" + ANSWER_OPEN


def labelled_document(case: Case, fact_chars: int) -> str:
    return prompt(case, fact_chars) + ";".join(case.charges) + ANSWER_CLOSE


def generate(model_dir: Path, prompts: list[str], max_new: int) -> list[str]:
    from sia.target.local import LocalBackend

    backend = LocalBackend(model_dir, threads=2)
    return [backend.sample(text, max_tokens=max_new, temperature=0.0, n=1, seed=0,
                           stop=[ANSWER_CLOSE])[0].text for text in prompts]


def fine_tune_answers(model_dir: Path, out: Path, train: list[Case], *, fact_chars: int, steps: int,
                      learning_rate: float, seed: int) -> Path:
    """A copy of `model_dir` with every weight trained on the answers of `train` (loss on the
    answer and its end-of-sequence token only), in seeded shuffled epochs of 16 cases."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sia.train import deterministic_torch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = []
    for case in train:
        prompt_ids = tokenizer(prompt(case, fact_chars))["input_ids"]
        answer_ids = tokenizer(";".join(case.charges) + ANSWER_CLOSE)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    with deterministic_torch(seed):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        model.train()
        for _ in range(steps):
            if len(order) < 16:
                order += torch.randperm(len(examples), generator=generator).tolist()
            picks, order = order[:16], order[16:]
            width = max(len(examples[i][0]) for i in picks)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([examples[i][0] + [pad] * (width - len(examples[i][0])) for i in picks])
            labels = torch.tensor([examples[i][1] + [-100] * (width - len(examples[i][1])) for i in picks])
            loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def measure(corpus: list[str], test: list[Case], options, config: TinyConfig, *, seed: int,  # type: ignore[no-untyped-def]
            steps: int, fact_chars: int, max_new: int, root: Path,
            then: Callable[[Path], Path] | None = None) -> dict:
    start = time.perf_counter()
    model_dir = build_tiny_model(corpus, seed=seed, root=root, pretrain_steps=steps, config=config).path
    if then is not None:
        model_dir = then(model_dir)
    built = time.perf_counter()
    texts = generate(model_dir, [prompt(case, fact_chars) for case in test], max_new)
    generated = time.perf_counter()
    return {**evaluate(texts, test, options), "build_s": round(built - start, 1),
            "generate_100_s": round(generated - built, 1), "examples": texts[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--fact-chars", type=int, default=200)
    parser.add_argument("--max-new", type=int, default=24)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--arms", default="labelled,base,sft")
    args = parser.parse_args()
    config = TinyConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                        intermediate_size=args.intermediate, max_positions=args.positions,
                        learning_rate=args.learning_rate, tokenizer="char")
    cases, options = load_cases(args.data), load_charge_list(OPTIONS_FILE)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms.split(",")}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            train, test = seeded_split(cases, seed)
            facts = [c.question.strip()[:args.fact_chars] for c in train]
            corpora = {"labelled": [labelled_document(c, args.fact_chars) for c in train],
                       "base": facts, "sft": facts}

            def sft(model_dir: Path, seed: int = seed, train: list[Case] = train) -> Path:
                out = Path(scratch) / f"sft-{seed}"
                return fine_tune_answers(model_dir, out, train, fact_chars=args.fact_chars,
                                         steps=args.sft_steps, learning_rate=args.sft_lr, seed=seed)

            for arm in runs:
                row = measure(corpora[arm], test, options, config, seed=seed, steps=args.steps,
                              fact_chars=args.fact_chars, max_new=args.max_new, root=Path(scratch),
                              then=sft if arm == "sft" else None)
                runs[arm].append({"seed": seed, **row})
                print(f"seed {seed} {arm:<9} F1 {row['f1']:.3f}  top-1 {row['top1_accuracy']:.3f}  "
                      f"abstention {row['abstention_rate']:.3f}  build {row['build_s']} s  "
                      f"100 generations {row['generate_100_s']} s  e.g. {row['examples'][:3]}", flush=True)
    entry = {"config": asdict(config), "steps": args.steps, "fact_chars": args.fact_chars,
             "sft_steps": args.sft_steps, "sft_lr": args.sft_lr,
             "max_new": args.max_new, "load_average": os.getloadavg(), "runs": runs,
             "mean_f1": {arm: statistics.fmean(r["f1"] for r in rows) for arm, rows in runs.items()}}
    append_entry(RESULTS, entry)
    print(f"mean F1 {entry['mean_f1']}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
