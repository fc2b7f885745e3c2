"""wordcat_graded evaluator: a continuous reward, the character similarity of the answer to
the category name (difflib's ratio of the normalised strings: 1 iff exactly right, partial
credit for near misses such as "fruits" or "animal fruit"). Built for the algorithms bench."""

from __future__ import annotations

import difflib
import string

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    return " ".join(text.translate(_PUNCTUATION).lower().split())


def reward(sample: dict, prediction: str, label: str) -> tuple[float, str | None]:
    answer = normalise(prediction)
    score = difflib.SequenceMatcher(None, answer, label).ratio() if answer else 0.0
    return round(score, 6), None if answer == label else ("near_miss" if score > 0 else "no_overlap")
