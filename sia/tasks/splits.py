"""Writing a task's split files from code: for tasks whose samples are generated
(wordcat, trimul, denoise) or built from a user's data file (lawbench)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sia.tasks.format import LABELS_FILE, SPLIT_FILES


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def split_files(samples: Mapping[str, list[dict[str, Any]]],
                labels: Mapping[str, Any]) -> dict[str, str]:
    """Relative path → content: each split's public fields, and every label (by id) in the
    private labels file, which only the evaluator reads."""
    files = {SPLIT_FILES[split]: jsonl(rows) for split, rows in samples.items()}
    files[LABELS_FILE] = jsonl([{"id": sample_id, "label": labels[sample_id]}
                                for sample_id in sorted(labels)])
    return files


def write_files(folder: Path, files: Mapping[str, str]) -> None:
    for relative, content in files.items():
        path = Path(folder) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def question_corpus(samples: list[dict[str, Any]]) -> list[str]:
    """The distinct questions: public text for the tiny model's pretraining."""
    return sorted({sample["question"] for sample in samples})
