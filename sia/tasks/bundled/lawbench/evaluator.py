"""lawbench evaluator: LawBench's own rule (`sia.tasks.lawbench.scoring`).

Every charge option occurring anywhere in the answer counts as predicted; the charge whose
match starts first is the top-1 prediction. Reward: 1 iff the top-1 charge is one of the
gold charges, else 0 ("abstained" when no option occurs in the answer, "wrong" otherwise).
Extra metrics: f1 (LawBench's official score, mean set F1 over all cases, unanswered = 0)
and abstention_rate.
"""

from __future__ import annotations

from sia.tasks.lawbench import aggregate, score


def reward(sample: dict, prediction: str, label: list[str]) -> tuple[float, str | None]:
    result = score(prediction, label, sample["options"])
    if result.abstained:
        return 0.0, "abstained"
    return (1.0, None) if result.top1_correct else (0.0, "wrong")


def metrics(samples: list[dict], predictions: list, labels: list, rewards: list[float]) -> dict[str, float]:
    scores = [score(p, label, s["options"]) for s, p, label in zip(samples, predictions, labels)]
    summary = aggregate(scores)
    return {"f1": summary["f1"], "abstention_rate": summary["abstention_rate"]}
