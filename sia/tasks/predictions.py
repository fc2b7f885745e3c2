"""Reading a user's prediction file for `sia tasks score`: predictions made outside the loop.

The format is JSONL, one object per line: `{"id": <sample id>, "prediction": <answer text or
null>}`. A task may also read its benchmark's own published format through a
`prediction_id(row)` function in its task.py (lawbench maps LawBench's `{"index",
"prediction", "refr"}` lines to its ids; `refr` is ignored, the gold comes from `--data`).
Every problem is a `PredictionFileError` naming the file and line, what was wrong and what
would be right; nothing here scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

FORMAT = '{"id": "<sample id>", "prediction": "<answer>"}'


class PredictionFileError(ValueError):
    """A prediction file cannot be read as asked; the message says where and what would be right."""


def read_predictions(path: Path, id_of: Callable[[dict[str, Any]], str | None],
                     known_ids: Collection[str], task_name: str) -> list[tuple[str, str | None]]:
    """(sample id, prediction) of every line, in file order; each id once and known to the task."""
    if not path.is_file():
        raise PredictionFileError(f"predictions file {path} not found (expected JSONL, one {FORMAT} per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PredictionFileError(f"{path}: not UTF-8 text ({error.reason})") from None
    pairs: list[tuple[str, str | None]] = []
    seen: dict[str, int] = {}
    known = set(known_ids)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PredictionFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                                      f"each line must be {FORMAT}") from None
        if not isinstance(row, dict):
            raise PredictionFileError(f"{where}: expected a JSON object {FORMAT}, got {type(row).__name__}")
        sample_id = id_of(row)
        if sample_id is None:
            raise PredictionFileError(f"{where}: no \"id\" naming a sample of task {task_name!r}; "
                                      f"each line must be {FORMAT}")
        if "prediction" not in row:
            raise PredictionFileError(f"{where}: no \"prediction\" field; each line must be {FORMAT}")
        prediction = row["prediction"]
        if prediction is not None and not isinstance(prediction, str):
            raise PredictionFileError(f"{where}: \"prediction\" must be a string or null, "
                                      f"got {type(prediction).__name__}")
        if sample_id not in known:
            example = next(iter(sorted(known)), "")
            raise PredictionFileError(f"{where}: task {task_name!r} has no sample {sample_id!r} "
                                      f"(its ids look like {example!r}; was the task built from "
                                      "the same data file?)")
        if sample_id in seen:
            raise PredictionFileError(f"{where}: a second prediction for {sample_id!r} "
                                      f"(the first is on line {seen[sample_id]})")
        seen[sample_id] = number
        pairs.append((sample_id, prediction))
    if not pairs:
        raise PredictionFileError(f"{path}: no predictions (expected JSONL, one {FORMAT} per line)")
    return pairs
