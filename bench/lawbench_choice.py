"""Can the embedded tiny model learn to choose among kNN candidates better than the kNN does?

    python bench/lawbench_choice.py --seeds 0 1 2 3 4 [--k 8 --candidates 6 --algorithm grpo ...]

The measurement behind issue J (LawBench 3-3, charge prediction). Per split seed (the
lawbench task's split: 300 train / 100 dev / 100 test), on the 100 test cases, scored
with LawBench's official F1 (`sia.tasks.lawbench.score`):

- knn_top1: the charges of the train case most similar to the fact (character 1-2-gram
  TF-IDF cosine, the vectorizer of `lawbench_baselines.py` fitted on the train facts);
- knn_vote: each charge of the `--k` nearest train cases gets their similarities summed;
  the heaviest wins. Its `--candidates` heaviest charges are the harness's candidates;
- knn_overlap: the candidates reranked by log vote share plus a weight (chosen on dev) times
  the share of the charge name's characters found in the fact: a harness with no model;
- base: the tiny model on the fact alone (`<fact>\n[罪名]`), greedy: what the target
  does with no harness (it has never seen a charge name after `[罪名]`);
- H_generate / H_loglik: the harness with the untrained model, prompt
  `<fact>\n候选:<c1>;<c2>;...\n[罪名]` (the fact cut to fit 512 positions, or `--fact-chars`).
  `generate`: the first candidate the greedy continuation names, else the vote (the
  fallback; `*_named` is the share it named). `loglik`: the candidate maximising
  log P(`<ci><eoa>`) plus a prior weight (chosen on dev; infinite is the vote) times its log vote
  share (`*_no_prior`: the model alone);
- WH_*: the same after a LoRA adapter trained by `sia.train.algorithms.train_adapter` on
  rollouts of the harness's prompts over the TRAIN split (each train case's candidates come
  from its neighbours *other than itself*, so a train prompt is as hard as a test one).
  Rollouts per prompt (`--rollouts`): `enumerate`, every candidate as a completion with
  reward = its official F1 (the whole group, what sampling would converge to); or
  `sample`, `--group` completions sampled from the model at temperature 1, reward = the
  official F1 of the harness's answer (the vote when the sample names no candidate).
  The candidate order of each training prompt is shuffled `--shuffles` times
  (`--no-shuffle` keeps the vote order, so a prior on the first candidate can be learnt);
- tfidf: the TF-IDF + softmax-regression baseline of `lawbench_baselines.py`.

The tiny model is built as sia builds it for the lawbench task (`sia.train.tiny`, corpus
= the task's `pretraining_corpus` of the public train and dev samples, seed 0, default
config `CJK_CONFIG` unless `--hidden/--layers/--pretrain-steps` say otherwise), cached under
`bench/results/lawbench_choice_models/`. Times are wall clock; torch uses one thread.
Writes bench/results/lawbench_choice.json (one entry per invocation, appended).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lawbench_baselines import (
    DATA,
    OPTIONS_FILE,
    TfidfVectorizer,
    append_entry,
    evaluate,
    tfidf,
)

from sia.tasks.lawbench import (
    Case,
    extract_charges,
    load_cases,
    load_charge_list,
    score,
    split_cases,
)

RESULTS = Path(__file__).resolve().parent / "results" / "lawbench_choice.json"
MODELS = Path(__file__).resolve().parent / "results" / "lawbench_choice_models"
ANSWER_OPEN, ANSWER_CLOSE, CANDIDATES_CUE = "[罪名]", "<eoa>", "候选:"


@dataclass(frozen=True)
class Choice:
    """One case as the harness sees it: the fact and the candidate charges, heaviest vote first."""

    case: Case
    candidates: tuple[str, ...]
    votes: tuple[float, ...]
    nearest: tuple[str, ...]
    """The charges of the single most similar train case (knn_top1's answer)."""

    @property
    def vote(self) -> str:
        return self.candidates[0]


class Neighbours:
    """Train cases ranked by character n-gram TF-IDF cosine to a fact; only cases with a
    listed charge count (the others' labels can never be predicted)."""

    def __init__(self, train: Sequence[Case], options: Sequence[str]) -> None:
        listed = set(options)
        self.train = [case for case in train if any(charge in listed for charge in case.charges)]
        self.listed = listed
        self.vectorizer = TfidfVectorizer.fit([case.question for case in self.train])
        self.matrix = self.vectorizer.transform([case.question for case in self.train])

    def choices(self, cases: Sequence[Case], k: int, size: int) -> list[Choice]:
        """Each case's `size` heaviest charges among its `k` nearest train cases, the case
        itself excluded (so train cases get candidates as a test case would)."""
        similarity = self.vectorizer.transform([case.question for case in cases]) @ self.matrix.T
        own = {case.case_id: i for i, case in enumerate(self.train)}
        out = []
        for row, case in enumerate(cases):
            if case.case_id in own:
                similarity[row, own[case.case_id]] = -1.0
            weights, indices = similarity[row].topk(k)
            votes: dict[str, float] = defaultdict(float)
            for weight, index in zip(weights.tolist(), indices.tolist()):
                for charge in self.train[index].charges:
                    if charge in self.listed:
                        votes[charge] += weight
            ranked = sorted(votes, key=lambda charge: -votes[charge])[:size]
            nearest = tuple(c for c in self.train[indices[0]].charges if c in self.listed)
            out.append(Choice(case, tuple(ranked), tuple(votes[c] for c in ranked), nearest))
        return out


def harness_prompt(fact: str, candidates: Sequence[str], fact_chars: int) -> str:
    return fact.strip()[:fact_chars] + "\n" + CANDIDATES_CUE + ";".join(candidates) + "\n" + ANSWER_OPEN


def bare_prompt(fact: str, fact_chars: int) -> str:
    return fact.strip()[:fact_chars] + "\n" + ANSWER_OPEN


def fact_budget(choices: Sequence[Choice], positions: int) -> int:
    """Fact characters that leave room, within `positions` tokens (a character is at most
    one token), for the longest candidate list, its cues and the longest answer."""
    tail = max(len(harness_prompt("", c.candidates, 0)) for c in choices)
    answer = max(len(candidate) for c in choices for candidate in c.candidates) + len(ANSWER_CLOSE) + 1
    return positions - tail - answer


def shuffled(choice: Choice, rng: random.Random) -> Choice:
    order = list(range(len(choice.candidates)))
    rng.shuffle(order)
    return replace(choice, candidates=tuple(choice.candidates[i] for i in order),
                   votes=tuple(choice.votes[i] for i in order))


class Scorer:
    """The tiny model (optionally with an adapter) scoring and continuing prompts, one thread."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None) -> None:
        from sia.target.local import LocalBackend

        loaded = LocalBackend(model_dir, adapter_dir, threads=1)  # the model as sia's target loads it
        self.torch, self.tokenizer, self.model = loaded.torch, loaded.tokenizer, loaded.model
        self.eos = self.tokenizer.eos_token_id

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def answer_ids(self, candidate: str) -> list[int]:
        return self.ids(candidate + ANSWER_CLOSE) + [self.eos]

    def loglik(self, prompt: str, completions: Sequence[str]) -> list[float]:
        """log P(completion + <eoa> + eos | prompt) of each completion, in one batch."""
        torch = self.torch
        prompt_ids = self.ids(prompt)
        rows = [prompt_ids + self.answer_ids(c) for c in completions]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=(ids != pad).long()).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        start = len(prompt_ids) - 1
        return [logprobs[i, start:len(rows[i]) - 1].sum().item() for i in range(len(rows))]

    def greedy(self, prompt: str, max_new: int) -> str:
        torch = self.torch
        ids = torch.tensor([self.ids(prompt)])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                      do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos)
        text = cast(str, self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return text.split(ANSWER_CLOSE)[0]


def loglik_scores(scorer: Scorer, choices: Sequence[Choice], fact_chars: int) -> list[list[float]]:
    """log P(<candidate><eoa> | harness prompt) of every candidate of every choice."""
    return [scorer.loglik(harness_prompt(c.case.question, c.candidates, fact_chars), c.candidates)
            for c in choices]


def pick(choice: Choice, logliks: Sequence[float], prior: float) -> str:
    """The candidate maximising its log-likelihood plus `prior` times the log of its vote
    share (0 is the model alone; infinite is the kNN vote, ties kept in vote order)."""
    if math.isinf(prior):
        return choice.vote
    total = sum(choice.votes)
    scores = [ll + prior * math.log(max(v, 1e-9) / total) for ll, v in zip(logliks, choice.votes)]
    return choice.candidates[max(range(len(scores)), key=scores.__getitem__)]


def overlap(fact: str, charge: str) -> float:
    """Share of the charge name's distinct characters that occur in the fact."""
    characters = set(charge)
    return sum(character in fact for character in characters) / len(characters)


def overlap_pick(choice: Choice, weight: float) -> str:
    """The candidate maximising log vote share plus `weight` times its `overlap` with the
    fact: a harness-only reranker (no model), the bar a trained model's reading must clear."""
    total = sum(choice.votes)
    scores = [math.log(max(v, 1e-9) / total) + weight * overlap(choice.case.question, c)
              for c, v in zip(choice.candidates, choice.votes)]
    return choice.candidates[max(range(len(scores)), key=scores.__getitem__)]


def generated_choices(scorer: Scorer, choices: Sequence[Choice], fact_chars: int) -> tuple[list[str], float]:
    """(answers, share of them the model named): each answer is the first candidate the
    greedy continuation names, else the kNN vote (the fallback)."""
    answers, named = [], 0
    for choice in choices:
        prompt = harness_prompt(choice.case.question, choice.candidates, fact_chars)
        found = extract_charges(scorer.greedy(prompt, 24), choice.candidates)
        answers.append(found[0] if found else choice.vote)
        named += bool(found)
    return answers, named / len(choices)


def rollouts_for(scorer: Scorer, choices: Sequence[Choice], options: Sequence[str], *, mode: str,
                 group: int, fact_chars: int, seed: int) -> list[Any]:
    """The harness's train-split rollouts (see the module docstring), exact token ids."""
    from sia.train.rollouts import Rollout

    out = []
    for index, choice in enumerate(choices):
        prompt = harness_prompt(choice.case.question, choice.candidates, fact_chars)
        prompt_ids = scorer.ids(prompt)
        name = f"{choice.case.case_id}/{index}"
        if mode == "enumerate":
            for candidate in choice.candidates:
                out.append(Rollout(prompt_ids=prompt_ids, completion_ids=scorer.answer_ids(candidate),
                                   reward=score(candidate, choice.case.charges, options).f1, group=name))
            continue
        for sample in sample_completions(scorer, prompt_ids, group, seed + index):
            text = cast(str, scorer.tokenizer.decode(sample, skip_special_tokens=True)).split(ANSWER_CLOSE)[0]
            named = extract_charges(text, choice.candidates)
            answer = named[0] if named else choice.vote
            out.append(Rollout(prompt_ids=prompt_ids, completion_ids=sample,
                               reward=score(answer, choice.case.charges, options).f1, group=name))
    return out


def sample_completions(scorer: Scorer, prompt_ids: list[int], n: int, seed: int) -> list[list[int]]:
    """`n` completions at temperature 1, each ending with eos when the model stopped."""
    torch = scorer.torch
    torch.manual_seed(seed)
    ids = torch.tensor([prompt_ids] * n)
    with torch.no_grad():
        out = scorer.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                    do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                    eos_token_id=scorer.eos, pad_token_id=scorer.eos)
    samples = []
    for row in out[:, len(prompt_ids):].tolist():
        samples.append(row[: row.index(scorer.eos) + 1] if scorer.eos in row else row)
    return samples


def build_model(train: list[Case], dev: list[Case], args: argparse.Namespace) -> Path:
    from sia.tasks.bundled.lawbench.task import pretraining_corpus
    from sia.train.tiny import CJK_CONFIG, build_tiny_model

    samples = [{"question": c.question, "instruction": c.instruction} for c in train + dev]
    config = replace(CJK_CONFIG, hidden_size=args.hidden, num_layers=args.layers,
                     intermediate_size=2 * args.hidden)
    return build_tiny_model(pretraining_corpus(samples, 0), seed=0, root=MODELS,
                            pretrain_steps=args.pretrain_steps, config=config).path


def train(model_dir: Path, choices: list[Choice], options: Sequence[str], fact_chars: int,
          args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    from sia.train.algorithms import LoraSpec, train_adapter

    rng = random.Random(seed)
    prompts = [shuffled(c, rng) if args.shuffle else c for c in choices for _ in range(args.shuffles)]
    scorer = Scorer(model_dir)
    rollouts = rollouts_for(scorer, prompts, options, mode=args.rollouts, group=args.group,
                            fact_chars=fact_chars, seed=seed)
    params: dict[str, Any] = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size}
    metrics = train_adapter(model_dir=model_dir, init_adapter_dir=None, rollouts=rollouts,
                            algorithm=args.algorithm, params=params, lora=LoraSpec(rank=args.rank,
                                                                                   alpha=2 * args.rank),
                            seed=seed, out_dir=out)
    return {"rollouts": len(rollouts), "mean_reward": statistics.fmean(r.reward for r in rollouts),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


PRIORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
"""Weights of the vote prior tried on the dev split (the best is used on test)."""


OVERLAP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Weights of the character overlap tried on the dev split."""


def overlap_answers(dev: list[Choice], test: list[Choice], options: Sequence[str]) -> tuple[float, list[str]]:
    """(weight best on dev, test answers at it) of the overlap reranker."""
    dev_f1 = {w: evaluate([overlap_pick(c, w) for c in dev], [c.case for c in dev], options)["f1"]
              for w in OVERLAP_WEIGHTS}
    best = max(OVERLAP_WEIGHTS, key=lambda w: (dev_f1[w], -w))
    return best, [overlap_pick(c, best) for c in test]


def harness_answers(scorer: Scorer, dev: list[Choice], test: list[Choice], options: Sequence[str],
                    fact_chars: int) -> dict[str, Any]:
    """Test answers of the log-likelihood harness at the prior best on dev (and at 0)."""
    dev_scores, test_scores = loglik_scores(scorer, dev, fact_chars), loglik_scores(scorer, test, fact_chars)
    dev_f1 = {prior: evaluate([pick(c, s, prior) for c, s in zip(dev, dev_scores)],
                              [c.case for c in dev], options)["f1"] for prior in PRIORS}
    best = max(PRIORS, key=lambda prior: (dev_f1[prior], -prior))
    return {"prior": "vote" if math.isinf(best) else best,
            "dev_f1": {("vote" if math.isinf(p) else str(p)): f1 for p, f1 in dev_f1.items()},
            "answers": [pick(c, s, best) for c, s in zip(test, test_scores)],
            "answers_no_prior": [pick(c, s, 0.0) for c, s in zip(test, test_scores)]}


def run_seed(seed: int, cases: list[Case], options: Sequence[str], args: argparse.Namespace,
             scratch: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train_cases, dev, test = split_cases(cases, seed=seed, dev_fraction=0.2, test_fraction=0.2)
    neighbours = Neighbours(train_cases, options)
    test_choices = neighbours.choices(test, args.k, args.candidates)
    dev_choices = neighbours.choices(dev, args.k, args.candidates)
    train_choices = neighbours.choices(neighbours.train, args.k, args.candidates)
    fact_chars = min(args.fact_chars, fact_budget(test_choices + dev_choices + train_choices, args.positions))
    row: dict[str, Any] = {"seed": seed, "fact_chars": fact_chars}

    def measure(name: str, answers: list[str]) -> None:
        row[name] = evaluate(answers, test, options)

    measure("knn_top1", [";".join(c.nearest) for c in test_choices])
    measure("knn_vote", [c.vote for c in test_choices])
    row["recall_at_candidates"] = statistics.fmean(any(g in c.candidates for g in c.case.charges)
                                                   for c in test_choices)
    measure("tfidf", tfidf(train_cases, test, options))
    row["overlap_weight"], answers = overlap_answers(dev_choices, test_choices, options)
    measure("knn_overlap", answers)
    model_dir = build_model(train_cases, dev, args)
    row["build_s"] = round(time.perf_counter() - started, 1)
    untrained = Scorer(model_dir)
    if "base" in args.arms:
        measure("base", [untrained.greedy(bare_prompt(c.question, fact_chars), 24) for c in test])
    if "generate" in args.arms:
        answers, row["H_generate_named"] = generated_choices(untrained, test_choices, fact_chars)
        measure("H_generate", answers)
    chosen = harness_answers(untrained, dev_choices, test_choices, options, fact_chars)
    measure("H_loglik", chosen["answers"])
    measure("H_loglik_no_prior", chosen["answers_no_prior"])
    row["H_prior"] = chosen["prior"]
    if "WH" in args.arms:
        trained_at = time.perf_counter()
        adapter = scratch / f"adapter-{seed}"
        row["training"] = train(model_dir, train_choices, options, fact_chars, args, seed, adapter)
        row["train_s"] = round(time.perf_counter() - trained_at, 1)
        tuned = Scorer(model_dir, adapter)
        chosen = harness_answers(tuned, dev_choices, test_choices, options, fact_chars)
        measure("WH_loglik", chosen["answers"])
        measure("WH_loglik_no_prior", chosen["answers_no_prior"])
        row["WH_prior"], row["WH_dev_f1"] = chosen["prior"], chosen["dev_f1"]
        if "generate" in args.arms:
            answers, row["WH_generate_named"] = generated_choices(tuned, test_choices, fact_chars)
            measure("WH_generate", answers)
    row["seed_s"] = round(time.perf_counter() - started, 1)
    return row


METHODS = ("tfidf", "knn_top1", "knn_vote", "knn_overlap", "base", "H_generate", "H_loglik", "H_loglik_no_prior",
           "WH_generate", "WH_loglik", "WH_loglik_no_prior")


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        values = [r[method]["f1"] for r in rows if method in r]
        if values:
            out[method] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                           "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--k", type=int, default=8, help="neighbours voting")
    parser.add_argument("--candidates", type=int, default=6, help="candidates offered to the model")
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--fact-chars", type=int, default=10_000, help="cap on the fact's characters")
    parser.add_argument("--algorithm", default="grpo")
    parser.add_argument("--rollouts", choices=("enumerate", "sample"), default="enumerate")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--shuffles", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--arms", default="base,generate,WH")
    args = parser.parse_args()
    cases, options = load_cases(args.data), load_charge_list(OPTIONS_FILE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lawbench-choice-") as scratch:
        for seed in args.seeds:
            row = run_seed(seed, cases, options, args, Path(scratch))
            rows.append(row)
            print(f"seed {seed}: " + "  ".join(f"{m} {row[m]['f1']:.3f}" for m in METHODS if m in row)
                  + f"  recall {row['recall_at_candidates']:.2f}  build {row['build_s']} s"
                  + f"  train {row.get('train_s', 0)} s  seed {row['seed_s']} s", flush=True)
    summary = summarise(rows)
    print(f"\nLawBench 3-3 test F1 over seeds {args.seeds}: mean ± sd [min, max]; "
          "minus knn_vote on the same seed: mean [min, max]")
    for method, stats in summary.items():
        gaps = [r[method]["f1"] - r["knn_vote"]["f1"] for r in rows if method in r]
        stats["minus_knn_vote"] = {"mean": statistics.fmean(gaps), "min": min(gaps), "max": max(gaps)}
        print(f"{method:<19} {stats['mean']:.3f} ± {stats['sd']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"
              f"   {statistics.fmean(gaps):+.3f} [{min(gaps):+.3f}, {max(gaps):+.3f}]")
    entry = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "load_average": os.getloadavg(), "summary": summary, "per_seed": rows}
    append_entry(RESULTS, entry)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
