"""lawbench evaluator: LawBench's own rule (`sia.tasks.lawbench.scoring`).

Every name of LawBench's option list occurring anywhere in the answer counts as predicted.
Reward: the case's F1 between predicted and gold charge sets, LawBench's per-case score, so
the task score (mean reward) is LawBench's official score ("abstained" when no option
occurs in the answer, "wrong" when F1 is 0 otherwise). Extra metrics: f1 (the same mean,
named as LawBench names it), abstention_rate (LawBench's) and top1_accuracy (ours: the
charge named first is a gold charge).
"""

from __future__ import annotations

from sia.tasks.lawbench import aggregate, score


def reward(sample: dict, prediction: str, label: list[str]) -> tuple[float, str | None]:
    result = score(prediction, label, sample["options"])
    return result.f1, ("abstained" if result.abstained else None)


def metrics(samples: list[dict], predictions: list, labels: list, rewards: list[float]) -> dict[str, float]:
    summary = aggregate([score(p, label, s["options"]) for s, p, label in zip(samples, predictions, labels)])
    return {"f1": summary["f1"], "abstention_rate": summary["abstention_rate"],
            "top1_accuracy": summary["top1_accuracy"]}
