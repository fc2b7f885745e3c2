"""PPO+GAE with its critic vs the same run with the critic frozen at zero, on a continuous reward.

    python bench/ppo_critic.py [--seeds 5] [--tokens 124] [--rollouts 64] [--updates 2]

A task built for this bench (it is not a sia task): the tiny model (built offline by
`sia.train.tiny`) is pretrained on lines "list : w w w ..." of words drawn evenly from
four categories (120 words a line, so it writes ~120-token completions); a completion
of "list :" is scored by the share of its words that are fruits (a continuous reward in
[0, 1], base ~0.25). Every word moves the reward by 1/T, so each token deserves its own
credit; with V = 0, gamma 1 and lambda 0.95, GAE gives the first of 120 tokens 0.95^119
≈ 0.002 of the last token's advantage. A fitted critic's TD errors give each token its
own (the value head reads a running sum of the hidden states, in which the share is linear).

Per seed: sample `--rollouts` completions, train one ppo_gae update (fit_critic true,
the default, or false), sample again from the new adapter, repeat `--updates` times
(the critic's value head is carried from one update to the next), then score 256 fresh
samples. Both arms share seeds, rollouts of the first update and evaluation seeds.
Writes bench/results/ppo_critic.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = {
    "fruit": ["apple", "banana", "grape", "mango", "pear", "kiwi", "melon", "papaya"],
    "animal": ["dog", "cat", "horse", "cow", "sheep", "lion", "tiger", "rabbit"],
    "color": ["red", "blue", "green", "yellow", "purple", "black", "white", "brown"],
    "tool": ["hammer", "saw", "wrench", "drill", "shovel", "chisel", "pliers", "file"],
}
FRUIT = set(CATEGORIES["fruit"])
PROMPT = "list :"


def corpus(lines: int = 400, length: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [w for ws in CATEGORIES.values() for w in ws]
    return [f"{PROMPT} " + " ".join(rng.choice(words) for _ in range(length)) for _ in range(lines)]


def reward(text: str) -> float:
    words = text.split()
    return sum(w in FRUIT for w in words) / len(words) if words else 0.0


def sample_rollouts(model_dir: Path, adapter: Path | None, *, n: int, tokens: int, seed: int):  # type: ignore[no-untyped-def]
    from sia.target.local import LocalBackend
    from sia.train.rollouts import Rollout

    backend = LocalBackend(model_dir, adapter)
    eos = backend.tokenizer.eos_token_id
    rollouts = []
    for k in range(n // 16):
        for s in backend.sample(PROMPT, max_tokens=tokens, temperature=1.0, n=16, seed=seed * 1000 + k):
            ids = s.token_ids + ([eos] if s.finish_reason == "stop" else [])
            logprobs = s.logprobs + ([None] if s.finish_reason == "stop" else [])
            if ids:
                rollouts.append(Rollout(prompt_ids=s.prompt_token_ids, completion_ids=ids,
                                        reward=reward(s.text), group=f"{k}", logprobs=logprobs))
    return rollouts


def evaluate(model_dir: Path, adapter: Path | None, tokens: int, seed: int) -> float:
    from sia.target.local import LocalBackend

    backend = LocalBackend(model_dir, adapter)
    scores = [reward(s.text) for k in range(16)
              for s in backend.sample(PROMPT, max_tokens=tokens, temperature=1.0, n=16, seed=10_000 + seed * 100 + k)]
    return sum(scores) / len(scores)


def run_arm(model_dir: Path, root: Path, *, fit_critic: bool, seed: int, args: argparse.Namespace) -> dict:
    from sia.train.algorithms import LoraSpec, train_adapter

    adapter: Path | None = None
    history = []
    for update in range(args.updates):
        rollouts = sample_rollouts(model_dir, adapter, n=args.rollouts, tokens=args.tokens, seed=seed * 10 + update)
        out = root / f"{'critic' if fit_critic else 'frozen'}-{seed}-{update}"
        metrics = train_adapter(model_dir=model_dir, init_adapter_dir=adapter, rollouts=rollouts,
                                algorithm="ppo_gae", params={"fit_critic": fit_critic, "lr": args.lr},
                                lora=LoraSpec(rank=8, alpha=16), seed=seed, out_dir=out)
        history.append({"rollout_reward": sum(r.reward for r in rollouts) / len(rollouts),
                        **{k: metrics[k] for k in ("value_loss_before_fit", "value_loss_after_fit")
                           if k in metrics}})
        adapter = out
    return {"final": evaluate(model_dir, adapter, args.tokens, seed), "updates": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=124)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args()
    from sia.train.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="sia-bench-ppo-critic-"))
    model_dir = build_tiny_model(corpus(), seed=0, root=root / "models").path
    base = statistics.mean(evaluate(model_dir, None, args.tokens, seed) for seed in range(args.seeds))
    rows = []
    for seed in range(args.seeds):
        critic = run_arm(model_dir, root, fit_critic=True, seed=seed, args=args)
        frozen = run_arm(model_dir, root, fit_critic=False, seed=seed, args=args)
        rows.append({"seed": seed, "critic": critic, "frozen": frozen})
        print(f"seed {seed}: base {base:.3f}  critic {critic['final']:.3f}  frozen at 0 {frozen['final']:.3f}",
              flush=True)
    wins = sum(r["critic"]["final"] > r["frozen"]["final"] for r in rows)
    summary = {"base": base, "critic_mean": statistics.mean(r["critic"]["final"] for r in rows),
               "frozen_mean": statistics.mean(r["frozen"]["final"] for r in rows),
               "critic_wins": wins, "seeds": args.seeds}
    print(f"mean reward: base {base:.3f}, critic {summary['critic_mean']:.3f}, "
          f"frozen {summary['frozen_mean']:.3f}; critic better on {wins}/{args.seeds} seeds")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ppo_critic.json").write_text(json.dumps({"args": vars(args), "summary": summary, "rows": rows},
                                                    indent=2))


if __name__ == "__main__":
    main()
