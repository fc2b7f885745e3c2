"""wordcat evaluator: reward 1 iff the answer, lowercased with punctuation removed and
surrounding whitespace stripped, is exactly the sample's category."""

from __future__ import annotations

import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(text.translate(_PUNCTUATION).lower().split())


def reward(sample: dict, prediction: str, label: str) -> tuple[float, str | None]:
    answer = normalise(prediction)
    if answer == label:
        return 1.0, None
    if answer in sample.get("options", []):
        return 0.0, "wrong_option"
    return 0.0, "not_an_option"


def metrics(samples: list[dict], predictions: list, labels: list, rewards: list[float]) -> dict[str, float]:
    """option_rate: share of answers that name one of the options (right or wrong)."""
    named = sum(isinstance(p, str) and normalise(p) in s.get("options", [])
                for s, p in zip(samples, predictions))
    return {"option_rate": named / len(samples)}
