"""Training-step overhead of sia's wrapper vs a bare torch loop (target ≤ 10 %).

    python bench/train_overhead.py [--hidden 64 --layers 2] [--rollouts 64 --batch 8 --epochs 4] [--repeats 3]

Both sides train the same rank-32 all-linear LoRA on the same tiny Llama (built offline
by `sia.train.tiny`, no pretraining) over the same GRPO rollouts, batches and optimizer
(AdamW, lr 5e-3, grad-norm clip 1.0), single-threaded:

- **sia**: `run_job` (spec → train_adapter → policy_gradient loop, with metrics.jsonl
  appended every step, a resumable checkpoint every `checkpoint_every` steps, canonical
  adapter files, manifest, DONE) — in a fresh job directory each repeat;
- **bare**: a plain loop — pad the batch, forward, log-softmax/gather, -mean(A·logp) over
  completion tokens, backward, clip, step — with nothing else.

Per-step time is the gap between consecutive step completions (so every per-step cost
sia adds, including the periodic checkpoint, lands in some step); the medians are compared,
and the means too (the mean includes the checkpoint steps). Repeats are interleaved.
The fixed per-job cost of sia (model load, hashing, adapter/manifest writing) is reported
separately. Writes bench/results/train_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def corpus() -> list[str]:
    return [f"question : what is {WORDS[a]} plus {WORDS[b]} ? answer : {WORDS[(a + b) % 10]}"
            for a in range(10) for b in range(10)]


def rollouts_for(lines: list[str], n: int, tokenizer):  # type: ignore[no-untyped-def]
    from sia.train.rollouts import Rollout

    out = []
    for i, line in enumerate(lines[: max(1, n // 4)]):
        question, answer = line.split(" answer : ")
        prompt = tokenizer(question + " answer :")["input_ids"]
        for guess in (answer, *[w for w in WORDS if w != answer][:3]):
            out.append(Rollout(prompt_ids=prompt,
                               completion_ids=tokenizer(guess)["input_ids"] + [tokenizer.eos_token_id],
                               reward=1.0 if guess == answer else 0.0, group=f"q{i}"))
    return out[:n]


def _stamp() -> tuple[float, float]:
    """(wall, CPU time of this thread): torch runs single-threaded here, on this thread, so
    the CPU time of a step is what it costs even when other processes share the machine."""
    return time.perf_counter(), time.thread_time()


def _gaps(stamps: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return ([b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
            [b[1] - a[1] for a, b in zip(stamps, stamps[1:])])


def run_sia(spec, model, data: Path, root: Path):  # type: ignore[no-untyped-def]
    from sia.train.job import run_job

    stamps: list[tuple[float, float]] = []
    job_dir = Path(tempfile.mkdtemp(dir=root, prefix="job-"))
    start = time.perf_counter()
    run_job(spec, job_dir=job_dir, model_dir=model.path, init_adapter_dir=None, data_path=data,
            on_progress=lambda _: stamps.append(_stamp()))
    total = time.perf_counter() - start
    return _gaps(stamps), total


def run_bare(model_dir: Path, rollouts, params: dict, rank: int, alpha: int, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sia.train.advantages import grpo
    from sia.train.policy_gradient import minibatch_plan
    from sia.train.rollouts import group_indices

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        pad = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
        groups = group_indices(rollouts)
        advantages = [0.0] * len(rollouts)
        for g, values in zip(groups, grpo([[rollouts[i].reward for i in g] for g in groups])):
            for i, a in zip(g, values):
                advantages[i] = a
        advantages_t = torch.tensor(advantages)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=0.0)
        plan = minibatch_plan(len(rollouts), params["epochs"], params["batch_size"], seed)
        model.train()
        stamps: list[tuple[float, float]] = []
        for indices in plan:
            rows = [rollouts[i] for i in indices]
            width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rows)
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            target = torch.zeros((len(rows), width - 1))
            for b, r in enumerate(rows):
                seq = r.prompt_ids + r.completion_ids
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, : len(seq)] = 1
                target[b, len(r.prompt_ids) - 1: len(seq) - 1] = 1.0
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            loss = -(advantages_t[indices][:, None] * logp * target).sum() / target.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, params["max_grad_norm"])
            optimizer.step()
            stamps.append(_stamp())
        return _gaps(stamps)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sia.train.rollouts import write_rollouts
    from sia.train.spec import LoraShape, TrainingSpec, data_hash
    from sia.train.tiny import TinyConfig, build_tiny_model, build_tokenizer

    work = Path(tempfile.mkdtemp(prefix="sia-train-bench-"))
    lines = corpus()
    config = TinyConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                        intermediate_size=2 * args.hidden)
    model = build_tiny_model(lines, seed=0, root=work / "models", pretrain_steps=0, config=config)
    rollouts = rollouts_for(lines, args.rollouts, build_tokenizer(lines))
    data = work / "rollouts.jsonl"
    write_rollouts(data, rollouts)
    params = {"lr": 5e-3, "epochs": args.epochs, "batch_size": args.batch, "max_grad_norm": 1.0,
              "checkpoint_every": args.checkpoint_every}
    spec = TrainingSpec(algorithm="grpo", params=params, base_model_id=model.model_id,
                        base_model_hash=model.model_hash, lora=LoraShape(rank=args.rank, alpha=2 * args.rank),
                        data_hash=data_hash(data), seed=0, precision="fp32")

    run_bare(model.path, rollouts, params, args.rank, 2 * args.rank, 0)  # warm-up (imports, allocator)
    wall: dict[str, list[float]] = {"sia": [], "bare": []}
    cpu: dict[str, list[float]] = {"sia": [], "bare": []}
    job_totals: list[float] = []
    for repeat in range(args.repeats):
        for side in (("sia", "bare") if repeat % 2 == 0 else ("bare", "sia")):  # alternate the order
            if side == "sia":
                (w, c), total = run_sia(spec, model, data, work)
                job_totals.append(total)
            else:
                w, c = run_bare(model.path, rollouts, params, args.rank, 2 * args.rank, 0)
            wall[side] += w
            cpu[side] += c

    n_steps = len(wall["sia"]) // args.repeats + 1
    result: dict = {
        "model": {"hidden": args.hidden, "layers": args.layers, "lora_rank": args.rank},
        "rollouts": len(rollouts), "batch": args.batch, "steps_per_job": n_steps,
        "repeats": args.repeats, "checkpoint_every": args.checkpoint_every,
    }
    print(f"model hidden={args.hidden} layers={args.layers}, LoRA r={args.rank}, "
          f"{len(rollouts)} rollouts, batch {args.batch}, {n_steps} steps/job, {args.repeats} repeats, "
          f"checkpoint every {args.checkpoint_every}")
    print(f"{'per step':22}{'sia (ms)':>10}{'bare (ms)':>11}{'overhead':>10}")
    for clock, data_ in (("cpu", cpu), ("wall", wall)):
        for stat, fn in (("median", statistics.median), ("mean", statistics.fmean)):
            s_, b_ = fn(data_["sia"]) * 1e3, fn(data_["bare"]) * 1e3
            result[f"{clock}_{stat}_ms"] = {"sia": s_, "bare": b_, "overhead_pct": 100 * (s_ / b_ - 1)}
            print(f"{clock + ' ' + stat:22}{s_:10.2f}{b_:11.2f}{100 * (s_ / b_ - 1):9.1f}%")
    fixed = statistics.median(job_totals) - n_steps * statistics.fmean(wall["sia"])
    result.update(sia_job_wall_s=statistics.median(job_totals), sia_job_fixed_cost_s=fixed)
    print(f"sia job wall {result['sia_job_wall_s']:.2f} s, of which fixed per-job cost ≈ {fixed:.2f} s")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = f"train_overhead_h{args.hidden}_l{args.layers}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
