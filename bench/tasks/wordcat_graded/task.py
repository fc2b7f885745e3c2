"""wordcat_graded: wordcat's samples and pretraining corpus, for a bench of continuous rewards.

Built for `bench/algorithms.py`, not a task of sia: the data files are copies of the
bundled wordcat's, and the pretraining corpus is wordcat's own recipe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_WORDCAT = Path(__file__).resolve().parents[3] / "sia" / "tasks" / "bundled" / "wordcat" / "task.py"
_spec = importlib.util.spec_from_file_location("wordcat_task", _WORDCAT)
assert _spec is not None and _spec.loader is not None
_wordcat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_wordcat)

pretraining_corpus = _wordcat.pretraining_corpus
