"""One training job in one directory: resumable, idempotent, content-addressed.

Layout of `job_dir` (every file but `metrics.jsonl` is written to a temp name and renamed,
and `DONE` is written last, so a reader that sees `DONE` sees a complete job):

    spec.json            the TrainingSpec (canonical JSON)            [written by trainers]
    inputs.json          {"model_dir", "init_adapter_dir", "data_path"} [written by trainers]
    rollouts.jsonl       a copy of the training data, checked against spec.data_hash
    checkpoint/          train_adapter's resumable state (an interrupted job resumes here)
    metrics.jsonl        one JSON line per progress step (appended; a resumed attempt adds
                         its own lines, each tagged with `attempt`)
    adapter/             adapter_model.safetensors + canonical adapter_config.json
    manifest.json        job_id, spec, adapter_hash, config_hash, metrics, files
    DONE                 the manifest's content hash; present ⇔ the job is finished

`adapter_hash` = content_hash({file name: sha256 of file}) over the canonical adapter
files, so the same weights and config give the same hash whatever directory, machine or
peft set-ordering produced them. It is also the blob name of that index's canonical JSON,
so `store_adapter` puts an adapter into a BlobStore under exactly its adapter_hash.

`python -m sia.train.job JOB_DIR` runs the job described by JOB_DIR/spec.json and
JOB_DIR/inputs.json while holding an exclusive `flock` on JOB_DIR/lock (inherited from
the parent with `--lock-fd N`, or taken here); a second process for the same job exits
with status 75 instead of training concurrently.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sia.core.events.canonical import canonical_json, content_hash
from sia.store.files import atomic_write, fsync_dir
from sia.train.spec import TrainingSpec, file_sha256

MANIFEST_FORMAT = 1
ADAPTER_DIR = "adapter"
EXIT_LOCKED = 75
"""Exit status of `python -m sia.train.job` when another process holds the job's lock."""

# peft writes these as lists built from sets: their order is not stable across processes.
_SET_LIKE_KEYS = ("target_modules", "modules_to_save", "exclude_modules",
                  "layers_to_transform", "target_parameters")
# Files peft may write next to the adapter that carry nothing the weights depend on.
_DROPPED_FILES = ("README.md",)


class JobError(RuntimeError):
    """A job cannot run or its directory is inconsistent (clear message, no traceback needed)."""


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = MANIFEST_FORMAT
    job_id: str
    spec: dict[str, Any]
    adapter_hash: str
    config_hash: str
    metrics: dict[str, float | None]
    files: dict[str, str]
    """Adapter file name → sha256 of its bytes (the files under `adapter/`)."""

    def adapter_dir(self, job_dir: Path) -> Path:
        return Path(job_dir) / ADAPTER_DIR


# ----------------------------------------------------------------------------- helpers


def canonical_adapter_config(config: dict[str, Any], base_model_id: str | None) -> dict[str, Any]:
    """peft's adapter_config.json with set-like lists sorted and the local model path replaced.

    `base_model_name_or_path` is wherever the model sat on the training machine (a temp
    dir, a volume path); it becomes the spec's `base_model_id` so two machines agree.
    """
    out = dict(config)
    for key in _SET_LIKE_KEYS:
        value = out.get(key)
        if isinstance(value, list):
            try:
                out[key] = sorted(value)
            except TypeError:
                pass
    if base_model_id is not None and "base_model_name_or_path" in out:
        out["base_model_name_or_path"] = base_model_id
    return out


def canonicalise_adapter_dir(adapter_dir: Path, base_model_id: str | None) -> None:
    adapter_dir = Path(adapter_dir)
    for name in _DROPPED_FILES:
        (adapter_dir / name).unlink(missing_ok=True)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise JobError(f"{adapter_dir} has no adapter_config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    atomic_write(config_path, canonical_json(canonical_adapter_config(config, base_model_id)))


def adapter_files(adapter_dir: Path) -> dict[str, str]:
    """File name → sha256 for every regular file in an adapter directory (not recursive)."""
    adapter_dir = Path(adapter_dir)
    files = {p.name: file_sha256(p) for p in sorted(adapter_dir.iterdir())
             if p.is_file() and not p.name.startswith(".")}
    if "adapter_model.safetensors" not in files:
        raise JobError(f"{adapter_dir} has no adapter_model.safetensors")
    return files


def adapter_hash(adapter_dir: Path) -> str:
    return content_hash(adapter_files(adapter_dir))


def store_adapter(blobs: Any, adapter_dir: Path) -> str:
    """Put an adapter's files and their index into a BlobStore; returns the adapter_hash."""
    files = adapter_files(adapter_dir)
    for name in files:
        blobs.put((Path(adapter_dir) / name).read_bytes())
    sha = blobs.put(canonical_json(files).encode("utf-8"))
    assert sha == content_hash(files)
    return sha


def load_adapter(blobs: Any, sha: str, dest: Path) -> Path:
    """Materialise the adapter named `sha` from a BlobStore into `dest` (idempotent)."""
    dest = Path(dest)
    files: dict[str, str] = json.loads(blobs.get_text(sha))
    dest.mkdir(parents=True, exist_ok=True)
    for name, file_sha in files.items():
        target = dest / name
        if not (target.is_file() and file_sha256(target) == file_sha):
            atomic_write(target, blobs.get(file_sha))
    return dest


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[str(key)] = number if math.isfinite(number) else None
    return out


def load_manifest(job_dir: Path, *, verify: bool = False) -> Manifest | None:
    """The finished job's manifest, or None when the job is not DONE."""
    job_dir = Path(job_dir)
    done = job_dir / "DONE"
    if not done.is_file():
        return None
    try:
        manifest = Manifest.model_validate_json((job_dir / "manifest.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise JobError(f"{job_dir} is marked DONE but its manifest is unreadable: {exc}") from exc
    if done.read_text(encoding="utf-8").strip() != content_hash(manifest.model_dump(mode="json")):
        raise JobError(f"{job_dir}: DONE does not match manifest.json (edited after completion?)")
    if verify:
        files = adapter_files(job_dir / ADAPTER_DIR)
        if files != manifest.files or content_hash(files) != manifest.adapter_hash:
            raise JobError(f"{job_dir}: adapter files do not match the manifest")
    return manifest


# ----------------------------------------------------------------------------- the job


def run_job(spec: TrainingSpec, *, job_dir: Path, model_dir: Path,
            init_adapter_dir: Path | None, data_path: Path,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> Manifest:
    """Train `spec` into `job_dir`, or return its manifest if it is already DONE.

    An interrupted job (crash, kill -9, a preempted container) resumes from
    `job_dir/checkpoint` when called again with the same spec.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    existing = load_manifest(job_dir)
    if existing is not None:
        if existing.job_id != spec.job_id:
            raise JobError(f"{job_dir} holds job {existing.job_id[:12]}, not {spec.job_id[:12]}")
        return existing

    spec_path = job_dir / "spec.json"
    if spec_path.is_file():
        recorded = TrainingSpec.from_json(spec_path.read_text(encoding="utf-8"))
        if recorded.job_id != spec.job_id:
            raise JobError(f"{job_dir} was created for job {recorded.job_id[:12]}, "
                           f"refusing to train {spec.job_id[:12]} there")
    else:
        atomic_write(spec_path, spec.to_json())

    rollouts_path = _checked_rollouts(spec, job_dir, Path(data_path))
    if spec.initial_adapter_hash is not None:
        if init_adapter_dir is None:
            raise JobError(f"spec starts from adapter {spec.initial_adapter_hash[:12]} "
                           "but no init_adapter_dir was given")
        found = adapter_hash(Path(init_adapter_dir))
        if found != spec.initial_adapter_hash:
            raise JobError(f"init adapter {init_adapter_dir} hashes to {found[:12]}, "
                           f"the spec names {spec.initial_adapter_hash[:12]}")
    elif init_adapter_dir is not None:
        raise JobError("an init_adapter_dir was given but the spec has no initial_adapter_hash")

    _check_precision(spec)
    from sia.train.algorithms import train_adapter
    from sia.train.rollouts import read_rollouts

    rollouts = read_rollouts(rollouts_path)
    attempt = _next_attempt(job_dir)
    metrics_log = open(job_dir / "metrics.jsonl", "a", encoding="utf-8")

    def progress(event: dict[str, Any]) -> None:
        line = json.dumps({**event, "attempt": attempt}, sort_keys=True, default=str)
        metrics_log.write(line + "\n")
        metrics_log.flush()
        if on_progress is not None:
            on_progress(event)

    staging = job_dir / ".adapter-staging"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        metrics = train_adapter(
            model_dir=Path(model_dir),
            init_adapter_dir=Path(init_adapter_dir) if init_adapter_dir is not None else None,
            rollouts=rollouts, algorithm=spec.algorithm, params=dict(spec.params),
            lora=spec.lora.to_lora_spec(), seed=spec.seed, out_dir=staging,
            checkpoint_dir=job_dir / "checkpoint", on_progress=progress)
    finally:
        metrics_log.close()

    canonicalise_adapter_dir(staging, spec.base_model_id)
    files = adapter_files(staging)
    final = job_dir / ADAPTER_DIR
    if final.exists():  # left by an attempt that died between this rename and DONE
        shutil.rmtree(final)
    os.replace(staging, final)
    fsync_dir(job_dir)

    manifest = Manifest(job_id=spec.job_id, spec=spec.canonical(), adapter_hash=content_hash(files),
                        config_hash=files["adapter_config.json"], metrics=_finite(metrics or {}),
                        files=files)
    body = manifest.model_dump(mode="json")
    atomic_write(job_dir / "manifest.json", canonical_json(body))
    atomic_write(job_dir / "DONE", content_hash(body) + "\n")
    return manifest


def _check_precision(spec: TrainingSpec) -> None:
    """train_adapter picks bf16 on a GPU and fp32 on CPU; the spec must say which it gets."""
    import torch

    have = "bf16" if torch.cuda.is_available() else "fp32"
    if spec.precision != have:
        raise JobError(f"spec asks for {spec.precision} but this machine trains in {have} "
                       f"({'a GPU' if have == 'bf16' else 'no GPU'}); build the spec with "
                       "sia.train.spec.default_precision() for the backend that runs it")


def _checked_rollouts(spec: TrainingSpec, job_dir: Path, data_path: Path) -> Path:
    """Copy the data into the job dir (so a resume needs nothing outside it) and check its hash."""
    local = job_dir / "rollouts.jsonl"
    if local.is_file() and file_sha256(local) == spec.data_hash:
        return local
    if not data_path.is_file():
        raise JobError(f"training data {data_path} does not exist")
    found = file_sha256(data_path)
    if found != spec.data_hash:
        raise JobError(f"training data {data_path} hashes to {found[:12]}, "
                       f"the spec names {spec.data_hash[:12]}")
    if data_path.resolve() != local.resolve():
        atomic_write(local, data_path.read_bytes())
    return local


def _next_attempt(job_dir: Path) -> int:
    path = job_dir / "attempts"
    count = 0
    if path.is_file():
        count = len(path.read_text(encoding="utf-8").split())
    count += 1
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    return count


# ----------------------------------------------------------------------------- entry point


def acquire_job_lock(job_dir: Path, fd: int | None = None) -> int | None:
    """Hold the job's exclusive flock; returns the fd, or None if another process holds it."""
    import fcntl

    if fd is None:
        fd = os.open(Path(job_dir) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def read_inputs(job_dir: Path) -> dict[str, Any]:
    return json.loads((Path(job_dir) / "inputs.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sia.train.job",
                                     description="Run the training job in JOB_DIR.")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--lock-fd", type=int, default=None,
                        help="an inherited fd whose flock the parent already took")
    args = parser.parse_args(argv)
    job_dir: Path = args.job_dir

    lock = acquire_job_lock(job_dir, args.lock_fd)
    if lock is None:
        print(f"sia.train.job: another process is running {job_dir}", file=sys.stderr)
        return EXIT_LOCKED
    atomic_write(job_dir / "pid", f"{os.getpid()}\n")

    spec = TrainingSpec.from_json((job_dir / "spec.json").read_text(encoding="utf-8"))
    inputs = read_inputs(job_dir)
    delay = float(os.environ.get("SIA_TRAIN_STEP_DELAY", "0") or 0)

    def slow(_: dict[str, Any]) -> None:  # test knob: make steps slow enough to kill mid-run
        import time

        time.sleep(delay)

    try:
        manifest = run_job(
            spec, job_dir=job_dir, model_dir=Path(inputs["model_dir"]),
            init_adapter_dir=Path(inputs["init_adapter_dir"]) if inputs.get("init_adapter_dir") else None,
            data_path=Path(inputs["data_path"]), on_progress=slow if delay > 0 else None)
    except JobError as exc:
        print(f"sia.train.job: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"job_id": manifest.job_id, "adapter_hash": manifest.adapter_hash}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
