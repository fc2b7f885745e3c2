"""Loading, checking and serving a task folder (see `sia.tasks.format` for the layout).

`load_task` checks everything it can before a run starts and raises `TaskError` listing every
problem it found, each a sentence naming the file (and line or field) at fault. A loaded
`Task` serves public samples and the public examples of the splits whose labels the task makes
public (train, by default), scores predictions with the task's evaluator (labels stay
inside this object), evaluates the held-out split (aggregates only) and describes itself
as the `TaskIdentity` a run records.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from sia.core.events.canonical import canonical_json
from sia.core.events.types import TaskIdentity
from sia.harness.contract import validate_harness
from sia.tasks.format import (
    BUILDER_FILE,
    EVALUATOR_FILE,
    LABEL_FIELD_NAMES,
    LABELS_FILE,
    PUBLIC_SPLITS,
    REFERENCE_HARNESS_FILE,
    SPLIT_FILES,
    TASK_FILE,
    TaskSpec,
)

BUNDLED_ROOT = Path(__file__).with_name("bundled")
MAX_PROBLEMS_PER_FILE = 10
_BUILT_MARK = ".built"


class TaskError(ValueError):
    """A task cannot be loaded or used as asked; the message says what and where."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


# ---------------------------------------------------------------- locating tasks


def bundled_task_names() -> list[str]:
    """Tasks shipped with sia (folders under sia/tasks/bundled holding a task.toml)."""
    if not BUNDLED_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_ROOT.iterdir() if (p / TASK_FILE).is_file())


def _locate(name_or_path: str | Path) -> tuple[Path, str]:
    """(task folder, source): a bundled name wins over a relative folder of the same name."""
    text = str(name_or_path)
    if text in bundled_task_names():
        return BUNDLED_ROOT / text, text
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise TaskError(f"{path}: not a folder; a task is a folder holding {TASK_FILE}")
    raise TaskError(
        f"unknown task {text!r}: neither a bundled task ({', '.join(bundled_task_names())}) "
        "nor an existing folder"
    )


def task_spec(name_or_path: str | Path) -> tuple[Path, TaskSpec]:
    """(folder, spec) of a task without loading its data: what `sia tasks show` can say
    about a task built from a data file the user has not given."""
    root, _ = _locate(name_or_path)
    problems: list[str] = []
    spec = read_spec(root, problems)
    if spec is None:
        raise TaskError(f"task {str(name_or_path)!r} is not usable: {'; '.join(problems)}", problems)
    return root, spec


def default_cache() -> Path:
    """Where tasks built from user data are cached: $SIA_TASK_CACHE or <sia home>/tasks."""
    from sia.store.home import sia_home

    return Path(os.environ.get("SIA_TASK_CACHE") or sia_home() / "tasks").expanduser()


# ---------------------------------------------------------------- small helpers


def _files_digest(root: Path, prefix: str, digest: Any) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or rel.suffix == ".pyc" or rel.name == _BUILT_MARK:
            continue
        content = path.read_bytes()
        digest.update(f"{prefix}{rel.as_posix()}\0{len(content)}\0".encode())
        digest.update(content)


def _import_file(path: Path, label: str) -> ModuleType:
    """Import a task's Python file under a unique module name (raises what the import raises)."""
    key = hashlib.sha256(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:12]
    name = f"sia_task_{label}_{key}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (not part of the task format)"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{TASK_FILE}: field `{where}`: {message}")
    return problems


def _read_jsonl(path: Path, rel: str, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; each bad line is one problem."""
    rows: list[tuple[int, dict[str, Any]]] = []
    own: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        problems.append(f"{rel}: not UTF-8 text ({error.reason})")
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            own.append(f"{rel} line {number}: not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(value, dict):
            own.append(f"{rel} line {number}: expected a JSON object, got {type(value).__name__}")
            continue
        sample_id = value.get("id")
        if not isinstance(sample_id, str) or not sample_id:
            own.append(f"{rel} line {number}: no \"id\" field holding a non-empty string")
            continue
        rows.append((number, value))
    problems.extend(_capped(own, rel))
    return rows


def _capped(problems: list[str], rel: str) -> list[str]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    extra = len(problems) - MAX_PROBLEMS_PER_FILE
    return [*problems[:MAX_PROBLEMS_PER_FILE], f"{rel}: {extra} more problems like the above"]


def _is_unanswered(text: object) -> bool:
    return not isinstance(text, str) or not text.strip()


# ---------------------------------------------------------------- the task


class Task:
    """A loaded, checked task. Labels and held-out samples stay inside it."""

    def __init__(self, root: Path, spec: TaskSpec, source: str, data: Path | None,
                 data_root: Path, splits: dict[str, list[dict[str, Any]]],
                 labels: dict[str, Any], evaluator: ModuleType, builder: ModuleType | None,
                 task_hash: str) -> None:
        self.root = root
        self.spec = spec
        self.source = source
        self.data = data
        self.data_root = data_root
        self._splits = splits
        self._labels = labels
        self._evaluator = evaluator
        self._builder = builder
        self._task_hash = task_hash
        self._split_of = {s["id"]: name for name, rows in splits.items() for s in rows}
        self._by_id = {s["id"]: s for rows in splits.values() for s in rows}
        self._examples = [{**{k: v for k, v in s.items() if k != "options"}, "label": labels[s["id"]]}
                          for split in SPLIT_FILES if split in spec.public_labels
                          for s in splits[split]]
        self._example_lines = {e["id"]: canonical_json(e).encode("utf-8") + b"\n" for e in self._examples}
        self._examples_jsonl = b"".join(self._example_lines.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"Task({self.spec.name!r}, {sizes}, source={self.source!r})"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        """What the agents are told the task is."""
        return self.spec.description

    @property
    def task_hash(self) -> str:
        return self._task_hash

    def split_sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self._splits.items()}

    # -- public samples

    def samples(self, split: str) -> list[dict[str, Any]]:
        """Public fields (with "id") of every sample of "train" or "dev", in file order."""
        if split == "test":
            raise TaskError("the test split is held out: no agent or harness may read it "
                            "(the final held-out run uses test_samples / evaluate_test)")
        if split not in PUBLIC_SPLITS:
            raise TaskError(f"unknown split {split!r}; public splits are train and dev")
        return copy.deepcopy(self._splits[split])

    def ids(self, split: str) -> list[str]:
        return [s["id"] for s in self.samples(split)]

    def sample(self, sample_id: str) -> dict[str, Any]:
        """Public fields of one train or dev sample."""
        split = self._split_of.get(sample_id)
        if split == "test":
            raise TaskError(f"sample {sample_id!r} is in the held-out test split")
        if split is None:
            raise TaskError(f"task {self.name!r} has no sample {sample_id!r}")
        return copy.deepcopy(self._by_id[sample_id])

    def sample_ids(self) -> list[str]:
        """Every sample id of every split (ids carry no label), to match a user's prediction file."""
        return [s["id"] for rows in self._splits.values() for s in rows]

    def split_of(self, sample_id: str) -> str:
        """Which split ("train", "dev" or "test") holds a sample."""
        if sample_id not in self._split_of:
            raise TaskError(f"task {self.name!r} has no sample {sample_id!r}")
        return self._split_of[sample_id]

    def prediction_id(self, row: dict[str, Any]) -> str | None:
        """The sample id a line of a prediction file names: its "id", else what the task's
        own `prediction_id(row)` (task.py) reads from its benchmark's published format."""
        if isinstance(row.get("id"), str):
            return row["id"]
        hook = getattr(self._builder, "prediction_id", None) if self._builder is not None else None
        return hook(row) if callable(hook) else None

    def options_of(self, sample_id: str) -> list[str]:
        """The sample's answer options ([] when the task has none)."""
        return list(self.sample(sample_id).get("options") or [])

    def public_examples(self) -> list[dict[str, Any]]:
        """Every sample of a split whose labels are public (`TaskSpec.public_labels`), in split
        and file order: its public fields but "options" (the solved sample has them), plus
        "label" exactly as in private/labels.jsonl. Empty when no label is public.

        Built once when the task loads; each call returns a fresh copy.
        """
        return copy.deepcopy(self._examples)

    def public_examples_jsonl(self, without: str | None = None) -> bytes:
        """`public_examples()` as the file a harness reads: one canonical JSON object per line,
        UTF-8 (b"" when no label is public).

        `without` leaves out the example of the sample an episode answers, so a harness can
        never look up its own sample's label: a train rollout scores, and trains, the harness
        and the model, never a lookup. Encoded once when the task loads; a call only joins lines.
        """
        if without not in self._example_lines:
            return self._examples_jsonl
        return b"".join(line for sample_id, line in self._example_lines.items() if sample_id != without)

    def reference_harness(self) -> str | None:
        path = self.root / REFERENCE_HARNESS_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def test_samples(self) -> list[dict[str, Any]]:
        """Public fields of the held-out samples, ONLY for the final held-out run of a harness.

        Never hand these to an agent, a digest or anything that chooses; score the answers
        with `evaluate_test`, which returns aggregates only.
        """
        return copy.deepcopy(self._splits["test"])

    # -- scoring

    def _score(self, sample_id: str, text: str | None) -> tuple[float, str | None]:
        """(reward, failure kind or None) of one answer; never raises for a bad answer."""
        reward_spec = self.spec.reward
        if _is_unanswered(text):
            return reward_spec.worst, "unanswered"
        sample = copy.deepcopy(self._by_id[sample_id])
        label = copy.deepcopy(self._labels[sample_id])
        try:
            outcome = self._evaluator.reward(sample, text, label)
        except Exception:  # a prediction that breaks the evaluator is that episode's failure
            return reward_spec.worst, "evaluator_error"
        failure: str | None = None
        if isinstance(outcome, tuple) and len(outcome) == 2:
            outcome, failure = outcome
        try:
            value = float(outcome)
        except (TypeError, ValueError):
            return reward_spec.worst, "evaluator_error"
        if not math.isfinite(value):
            return reward_spec.worst, "evaluator_error"
        value = reward_spec.clip(value)
        if failure is None and reward_spec.kind != "continuous" and value == reward_spec.worst:
            failure = "wrong"
        return value, (str(failure) if failure is not None else None)

    def _aggregate(self, ids: list[str], texts: list[str | None],
                   scored: list[tuple[float, str | None]]) -> dict[str, Any]:
        n = len(ids)
        rewards = [r for r, _ in scored]
        answered = sum(not _is_unanswered(t) for t in texts)
        metrics: dict[str, float] = {"answered_rate": answered / n} if n else {}
        extra = getattr(self._evaluator, "metrics", None)
        if n and extra is not None:
            try:
                computed = extra([copy.deepcopy(self._by_id[i]) for i in ids], list(texts),
                                 [copy.deepcopy(self._labels[i]) for i in ids], list(rewards))
                metrics.update({str(k): float(v) for k, v in dict(computed).items()})
            except Exception as error:
                raise TaskError(f"{EVALUATOR_FILE}: metrics() failed: {_describe(error)}") from error
        return {
            "score": (sum(rewards) / n) if n else None,
            "n": n,
            "n_answered": answered,
            "failures": dict(sorted(Counter(f for _, f in scored if f is not None).items())),
            "metrics": metrics,
        }

    def _check_ids(self, ids: list[str], allowed: set[str], what: str) -> None:
        for sample_id in ids:
            if sample_id not in allowed:
                where = self._split_of.get(sample_id)
                if where == "test":
                    raise TaskError(f"sample {sample_id!r} is held out: score it with evaluate_test")
                if where is None:
                    raise TaskError(f"task {self.name!r} has no sample {sample_id!r}")
                raise TaskError(f"sample {sample_id!r} is in the {where} split, not {what}")

    def evaluate(self, predictions: Sequence[tuple[str, str | None]],
                 scored: int | None = None, *, held_out: bool = False) -> dict[str, Any]:
        """Score (sample_id, answer) pairs of train/dev samples.

        Returns {"score", "rewards", "failure_kinds", "n", "n_answered", "failures",
        "metrics"}: `rewards` and `failure_kinds` cover every prediction; everything else
        covers the first `scored` predictions (all when None), so a caller can pass the dev
        answers first and the train rollouts after. `score` is their mean reward (None when
        `scored` is 0); unanswered (None or blank) answers count, as the worst reward.
        `held_out=True` admits test samples too: only for a user scoring predictions made
        outside the loop (`sia tasks score`), never for anything an agent sees.
        """
        pairs = [(str(i), t) for i, t in predictions]
        ids = [i for i, _ in pairs]
        allowed = {i for i, s in self._split_of.items() if held_out or s != "test"}
        self._check_ids(ids, allowed, "train/dev")
        count = len(pairs) if scored is None else scored
        if not 0 <= count <= len(pairs):
            raise TaskError(f"scored={scored} is outside 0..{len(pairs)} (the number of predictions)")
        outcomes = [self._score(i, t) for i, t in pairs]
        result = self._aggregate(ids[:count], [t for _, t in pairs[:count]], outcomes[:count])
        return {"score": result["score"], "rewards": [r for r, _ in outcomes],
                "failure_kinds": [f for _, f in outcomes], **{k: v for k, v in result.items()
                                                             if k != "score"}}

    def reward(self, sample_id: str, text: str | None) -> float:
        """Reward of one answer to one train/dev sample."""
        self._check_ids([sample_id], {i for i, s in self._split_of.items() if s != "test"},
                        "train/dev")
        return self._score(sample_id, text)[0]

    def evaluate_test(self, predictions: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
        """Aggregates only ({"score", "n", "n_answered", "failures", "metrics"}) on the test split.

        Every test sample counts: one without a prediction is unanswered.
        """
        test_ids = [s["id"] for s in self._splits["test"]]
        if not test_ids:
            raise TaskError(f"task {self.name!r} has no test split")
        given: dict[str, str | None] = {}
        for sample_id, text in predictions:
            if sample_id in given:
                raise TaskError(f"two predictions for test sample {sample_id!r}")
            given[str(sample_id)] = text
        self._check_ids(list(given), set(test_ids), "test")
        texts = [given.get(i) for i in test_ids]
        return self._aggregate(test_ids, texts, [self._score(i, t) for i, t in zip(test_ids, texts)])

    # -- identity and corpus

    def identity(self) -> TaskIdentity:
        train_ids = tuple(s["id"] for s in self._splits["train"])
        return TaskIdentity(
            name=self.spec.name,
            task_hash=self._task_hash,
            dev_ids=tuple(s["id"] for s in self._splits["dev"]),
            reward_kind=self.spec.reward.kind,
            train_ids=train_ids,
            rollouts_per_generation=min(self.spec.rollouts_per_generation, len(train_ids)),
            source=self.source,
            data=str(self.data) if self.data is not None else None,
            test_size=len(self._splits["test"]),
        )

    def pretraining_corpus(self, seed: int | None = None) -> list[str]:
        """Public text for building a tiny model offline; never labels.

        The task's own `pretraining_corpus(samples, seed)` (task.py, else evaluator.py) gets
        only the public train and dev samples; without one, each sample's fields-layout
        prompt is the corpus.
        """
        samples = self.samples("train") + self.samples("dev")
        seed = self.spec.seed if seed is None else seed
        for module in (self._builder, self._evaluator):
            recipe = getattr(module, "pretraining_corpus", None) if module is not None else None
            if recipe is not None:
                return [str(text) for text in recipe(samples, seed)]
        return [fields_prompt(sample) for sample in samples]


def fields_prompt(sample: dict[str, Any]) -> str:
    """A sample laid out as the template harness's "fields" prompt, ending in `answer:`."""
    lines = [f"{key}: {value}" for key, value in sample.items() if key not in ("id", "options")]
    if sample.get("options"):
        lines.append("options: " + ", ".join(sample["options"]))
    lines.append("answer:")
    return "\n".join(lines)


# ---------------------------------------------------------------- checking and loading


def read_spec(root: Path, problems: list[str]) -> TaskSpec | None:
    path = root / TASK_FILE
    if not path.is_file():
        problems.append(f"{root}: no {TASK_FILE} (a task folder must hold one)")
        return None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        problems.append(f"{TASK_FILE}: not UTF-8 text ({error.reason})")
        return None
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{TASK_FILE}: not valid TOML ({error})")
        return None
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as error:
        problems.extend(_pydantic_problems(error))
        return None


def _import_optional(root: Path, filename: str, label: str, problems: list[str]) -> ModuleType | None:
    path = root / filename
    if not path.is_file():
        return None
    try:
        return _import_file(path, label)
    except BaseException as error:  # noqa: BLE001 - any import failure is a task problem
        if isinstance(error, KeyboardInterrupt):
            raise
        problems.append(f"{filename}: does not import ({_describe(error)})")
        return None


def _build(root: Path, spec: TaskSpec, builder: ModuleType | None, data: Path,
           cache: Path, problems: list[str]) -> Path | None:
    """Build (or reuse) the splits from the user's data file; the built folder or None."""
    build = getattr(builder, "build", None) if builder is not None else None
    if not callable(build):
        problems.append(f"{BUILDER_FILE}: a task with [data] required = true needs a "
                        "`build(data, out, params)` function")
        return None
    digest = hashlib.sha256()
    _files_digest(root, "task/", digest)
    digest.update(b"\0data\0" + data.read_bytes())
    target = cache / f"{spec.name}-{digest.hexdigest()[:16]}"
    if (target / _BUILT_MARK).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=cache))
    try:
        build(data, scratch, dict(spec.build))
    except Exception as error:
        shutil.rmtree(scratch, ignore_errors=True)
        problems.append(f"{BUILDER_FILE}: building the task from {data} failed: {_describe(error)}")
        return None
    (scratch / _BUILT_MARK).write_text("ok\n")
    try:
        os.replace(scratch, target)
    except OSError:  # built concurrently by another process: theirs is as good as ours
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _read_splits(data_root: Path, spec: TaskSpec, problems: list[str]
                 ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]] | None:
    splits: dict[str, list[dict[str, Any]]] = {}
    seen: dict[str, str] = {}
    for split, rel in SPLIT_FILES.items():
        path = data_root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (the {split} split)")
            continue
        own: list[str] = []
        rows = []
        for number, row in _read_jsonl(path, rel, problems):
            sample_id = row["id"]
            if sample_id in seen:
                own.append(f"{rel} line {number}: duplicate id {sample_id!r} (also in {seen[sample_id]})")
                continue
            seen[sample_id] = f"{rel} line {number}"
            leaked = sorted(LABEL_FIELD_NAMES & set(row))
            if leaked:
                own.append(f"{rel} line {number} (id {sample_id!r}): field {leaked[0]!r} would give "
                           f"the label away; labels belong in {LABELS_FILE}")
            options = row.get("options")
            if options is not None and not (isinstance(options, list)
                                            and all(isinstance(o, str) for o in options)):
                own.append(f"{rel} line {number} (id {sample_id!r}): \"options\" must be a list of strings")
            rows.append(row)
        problems.extend(_capped(own, rel))
        splits[split] = rows
        expected = getattr(spec.splits, split)
        if expected is not None and expected != len(rows):
            problems.append(f"{rel}: {len(rows)} samples, but {TASK_FILE} [splits] says {split} = {expected}")
    if "dev" in splits and not splits["dev"]:
        problems.append(f"{SPLIT_FILES['dev']}: no samples (the dev split scores every generation)")

    labels_path = data_root / LABELS_FILE
    if not labels_path.is_file():
        problems.append(f"{LABELS_FILE}: missing (labels of the train, dev and test samples)")
        return None
    labels: dict[str, Any] = {}
    own = []
    for number, row in _read_jsonl(labels_path, LABELS_FILE, problems):
        sample_id = row["id"]
        if "label" not in row:
            own.append(f"{LABELS_FILE} line {number}: no \"label\" field")
        elif sample_id in labels:
            own.append(f"{LABELS_FILE} line {number}: a second label for id {sample_id!r}")
        elif sample_id not in seen:
            if len(splits) == len(SPLIT_FILES):  # else the missing split is the one problem
                own.append(f"{LABELS_FILE} line {number}: label for id {sample_id!r}, "
                           "which is in no split")
        else:
            labels[sample_id] = row["label"]
    problems.extend(_capped(own, LABELS_FILE))
    unlabelled = [i for i in seen if i not in labels]
    if unlabelled:
        shown = ", ".join(repr(i) for i in unlabelled[:5])
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        problems.append(f"{LABELS_FILE}: no label for {shown}{more}")
    own = []
    for split, rows in splits.items():
        for row in rows:
            label = labels.get(row["id"])
            if label in (None, "", [], {}):
                continue
            for key, value in row.items():
                if key != "id" and value == label:
                    own.append(f"{SPLIT_FILES[split]} (id {row['id']!r}): field {key!r} holds the "
                               "label verbatim")
    problems.extend(_capped(own, "public splits"))
    if len(splits) != len(SPLIT_FILES):
        return None
    return splits, labels


def _inspect(name_or_path: str | Path, data: Path | None, cache: Path | None
             ) -> tuple[Task | None, list[str]]:
    root, source = _locate(name_or_path)
    problems: list[str] = []
    spec = read_spec(root, problems)
    if spec is None:
        return None, problems

    evaluator = _import_optional(root, EVALUATOR_FILE, f"{spec.name}_evaluator", problems)
    if not (root / EVALUATOR_FILE).is_file():
        problems.append(f"{EVALUATOR_FILE}: missing (it defines reward(sample, prediction, label))")
    elif evaluator is not None:
        if not callable(getattr(evaluator, "reward", None)):
            problems.append(f"{EVALUATOR_FILE}: no function `reward(sample, prediction, label)`")
        if hasattr(evaluator, "metrics") and not callable(evaluator.metrics):
            problems.append(f"{EVALUATOR_FILE}: `metrics` must be a function "
                            "metrics(samples, predictions, labels, rewards)")
    builder = _import_optional(root, BUILDER_FILE, f"{spec.name}_task", problems)
    reference = root / REFERENCE_HARNESS_FILE
    if reference.is_file():
        problems.extend(f"{REFERENCE_HARNESS_FILE}: {p}"
                        for p in validate_harness(reference.read_text(encoding="utf-8")))

    data_root = root
    if spec.data.required:
        what = f" ({spec.data.description})" if spec.data.description else ""
        if data is None:
            problems.append(f"task {spec.name!r} is built from a data file you provide{what}: "
                            "pass it with --data FILE")
            return None, problems
        data = Path(data).expanduser().resolve()
        if not data.is_file():
            problems.append(f"data file {data} not found (task {spec.name!r} is built from it{what})")
            return None, problems
        if (root / BUILDER_FILE).is_file() and builder is None:
            return None, problems
        built = _build(root, spec, builder, data, cache or default_cache(), problems)
        if built is None:
            return None, problems
        data_root = built
    elif data is not None:
        problems.append(f"task {spec.name!r} takes no data file, but --data {data} was given")

    read = _read_splits(data_root, spec, problems)
    if read is None or problems or evaluator is None:
        return None, problems
    splits, labels = read
    digest = hashlib.sha256()
    _files_digest(root, "task/", digest)
    if data_root != root:
        _files_digest(data_root, "built/", digest)
    task = Task(root, spec, source, data, data_root, splits, labels, evaluator, builder,
                digest.hexdigest())
    return task, []


def load_task(name_or_path: str | Path, *, data: Path | None = None,
              cache: Path | None = None) -> Task:
    """A bundled task by name or a task folder by path; TaskError lists every problem found.

    `data` is the user's data file for tasks built from one (`[data] required = true`);
    the built splits are cached under `cache` (default `default_cache()`).
    """
    task, problems = _inspect(name_or_path, Path(data) if data is not None else None, cache)
    if task is None:
        label = str(name_or_path)
        listing = "\n".join(f"  - {p}" for p in problems)
        raise TaskError(f"task {label!r} is not usable:\n{listing}", problems)
    return task


def validate_task(name_or_path: str | Path, data: Path | None = None,
                  cache: Path | None = None) -> list[str]:
    """Every problem with a task (empty when it loads), each a sentence naming its file."""
    try:
        task, problems = _inspect(name_or_path, Path(data) if data is not None else None, cache)
    except TaskError as error:
        return error.problems
    return [] if task is not None else problems
