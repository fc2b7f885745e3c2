"""Training on Modal: an H100 function whose body is the same `run_job` as local training.

Deploy once with `modal deploy -m sia.train.modal_app`; then `ModalTrainer` submits jobs
with `train.spawn(...)` (the FunctionCall id is what TrainingJobSubmitted records as
`call_id`) and re-attaches after a crash with `FunctionCall.from_id(call_id)`.

The Volume `sia-adapters` (mounted at /vol) is the source of truth: a job lives in
`/vol/jobs/<job_id>/` exactly as a local job does (checkpoint, metrics.jsonl, adapter/,
manifest.json, DONE written last). A retried container (Modal retries on preemption or
crash) or a duplicate call reloads the volume, finds DONE and returns the recorded
manifest, or finds the checkpoint and resumes. Checkpoints are committed while training
(at most every `SIA_MODAL_COMMIT_S` seconds) so a retry does not start from zero.
Modal has no cross-container file locking, so two *concurrent* calls for one job both
train; the first DONE committed wins and the other returns it.

The function body runs locally too (`train.local(spec_json, inputs)`); then the volume
root is `$SIA_MODAL_VOLUME_ROOT` and nothing talks to Modal.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modal

from sia.train.job import JobError, Manifest, atomic_write, load_manifest, run_job
from sia.train.spec import TrainingSpec, file_sha256

APP_NAME = "sia-train"
FUNCTION_NAME = "train"
VOLUME_NAME = "sia-adapters"
VOLUME_MOUNT = "/vol"
BACKEND = "modal"

# The versions this code is tested with; the image pins them so a job trains on the
# same software wherever and whenever it runs.
PINNED = (
    "torch==2.13.0",
    "transformers==5.24.0",
    "peft==0.21.2",
    "trl==1.16.0",
    "accelerate==1.15.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "huggingface_hub==2.4.0",
    "pydantic==2.13.4",
    "numpy==2.4.6",
)

app = modal.App(APP_NAME)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*PINNED)
    .env({"HF_HOME": f"{VOLUME_MOUNT}/hf", "TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("sia")  # must stay last (files are added at container start)
)
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)


def volume_root() -> Path:
    return Path(os.environ.get("SIA_MODAL_VOLUME_ROOT") or VOLUME_MOUNT)


def _remote() -> bool:
    return not modal.is_local()


@app.function(image=image, gpu="H100", timeout=4 * 3600,
              retries=modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=10.0),
              volumes={VOLUME_MOUNT: volume})
def train(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run (or find) the job; returns its manifest as a dict.

    `inputs` (all optional but one data source):
      rollouts_jsonl       the training data inline (checked against spec.data_hash)
      data_path            or a path to it, relative to the volume root
      init_adapter_job     start from the adapter of that finished job on the volume
      init_adapter_files   or the init adapter inline: {file name: base64 bytes}
      model_dir            a model directory (relative to the volume root, or absolute);
                           default: `spec.base_model_id` from the Hugging Face hub,
                           cached on the volume (`model_revision` pins a revision)
    """
    return train_body(spec_json, inputs, commit=_commit if _remote() else None,
                      reload=volume.reload if _remote() else None)


def _commit() -> None:
    volume.commit()


def train_body(spec_json: str, inputs: dict[str, Any], *,
               commit: Callable[[], None] | None = None,
               reload: Callable[[], None] | None = None) -> dict[str, Any]:
    spec = TrainingSpec.from_json(spec_json)
    root = volume_root()
    if reload is not None:
        reload()  # see what earlier attempts or other containers committed
    job_dir = root / "jobs" / spec.job_id
    existing = load_manifest(job_dir)
    if existing is not None:
        return existing.model_dump(mode="json")
    job_dir.mkdir(parents=True, exist_ok=True)

    data_path = _materialise_data(spec, root, job_dir, inputs)
    init_dir = _materialise_init_adapter(root, job_dir, inputs)
    model_dir = _model_dir(spec, root, inputs)

    every = float(os.environ.get("SIA_MODAL_COMMIT_S", "600"))
    last = [time.monotonic()]

    def progress(_: dict[str, Any]) -> None:
        if commit is not None and time.monotonic() - last[0] >= every:
            commit()  # persist the checkpoint, so a retry resumes instead of restarting
            last[0] = time.monotonic()

    manifest = run_job(spec, job_dir=job_dir, model_dir=model_dir, init_adapter_dir=init_dir,
                       data_path=data_path, on_progress=progress)
    if commit is not None:
        commit()
    return manifest.model_dump(mode="json")


def _resolve(root: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def _materialise_data(spec: TrainingSpec, root: Path, job_dir: Path, inputs: dict[str, Any]) -> Path:
    target = job_dir / "rollouts.jsonl"
    if target.is_file() and file_sha256(target) == spec.data_hash:
        return target
    if inputs.get("rollouts_jsonl") is not None:
        atomic_write(target, inputs["rollouts_jsonl"])
        return target
    if inputs.get("data_path"):
        return _resolve(root, inputs["data_path"])
    raise JobError("train inputs name no data: give rollouts_jsonl or data_path")


def _materialise_init_adapter(root: Path, job_dir: Path, inputs: dict[str, Any]) -> Path | None:
    if inputs.get("init_adapter_job"):
        source = root / "jobs" / inputs["init_adapter_job"]
        if load_manifest(source) is None:
            raise JobError(f"init adapter job {inputs['init_adapter_job'][:12]} is not DONE on the volume")
        return source / "adapter"
    files = inputs.get("init_adapter_files")
    if files:
        target = job_dir / "init-adapter"
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise JobError(f"bad adapter file name {name!r}")
            atomic_write(target / name, base64.b64decode(data))
        return target
    return None


def _model_dir(spec: TrainingSpec, root: Path, inputs: dict[str, Any]) -> Path:
    if inputs.get("model_dir"):
        return _resolve(root, inputs["model_dir"])
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec.base_model_id, revision=inputs.get("model_revision"),
                                  cache_dir=str(root / "hf")))


# ----------------------------------------------------------------------------- client


class ModalCredentialsMissing(RuntimeError):
    pass


class ModalOutputExpired(RuntimeError):
    """Modal no longer holds the call's result and the volume has no finished job."""


def modal_credentials_present() -> bool:
    """A Modal token from MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml (never read aloud)."""
    from modal.config import config

    try:
        return bool(config.get("token_id") and config.get("token_secret"))
    except Exception:  # a malformed config file counts as no credentials
        return False


def require_credentials() -> None:
    if not modal_credentials_present():
        raise ModalCredentialsMissing(
            "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run "
            "`modal token new` (writes ~/.modal.toml); then deploy the trainer once with "
            "`modal deploy -m sia.train.modal_app`")


def upload_model(model_dir: Path, model_hash: str) -> str:
    """Put a locally built base model (the embedded tiny model) on the Volume once; returns
    its path relative to the volume root, for `inputs["model_dir"]`."""
    require_credentials()
    remote = f"models/{model_hash}"
    volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
    try:
        present = {entry.path for entry in volume.listdir(remote)}
    except Exception:  # noqa: BLE001 - a missing directory is reported differently across versions
        present = set()
    if not present:
        with volume.batch_upload() as batch:
            batch.put_directory(str(model_dir), remote)
    return remote


def adapter_inputs(adapter_dir: Path) -> dict[str, str]:
    """An init adapter inline for `inputs["init_adapter_files"]` (small LoRA adapters only)."""
    return {p.name: base64.b64encode(p.read_bytes()).decode("ascii")
            for p in sorted(Path(adapter_dir).iterdir()) if p.is_file() and not p.name.startswith(".")}


class ModalTrainer:
    """Submit to / re-attach to the deployed `sia-train` app."""

    backend = BACKEND

    def __init__(self, *, app_name: str = APP_NAME, environment: str | None = None,
                 poll_s: float = 30.0) -> None:
        self.app_name = app_name
        self.environment = environment
        self.poll_s = poll_s

    def _function(self) -> Any:
        require_credentials()
        return modal.Function.from_name(self.app_name, FUNCTION_NAME,
                                        environment_name=self.environment)

    def submit(self, spec: TrainingSpec, inputs: dict[str, Any]) -> str:
        """Spawn the job; returns the FunctionCall id to record as TrainingJobSubmitted.call_id."""
        try:
            call = self._function().spawn(spec.to_json(), inputs)
        except modal.exception.NotFoundError as exc:
            raise RuntimeError(f"Modal app {self.app_name!r} is not deployed: run "
                               f"`modal deploy -m sia.train.modal_app` ({exc})") from exc
        return call.object_id

    def attach(self, call_id: str, *, job_id: str | None = None, timeout: float | None = None,
               on_poll: Callable[[float], None] | None = None) -> Manifest:
        """Wait for a spawned call's manifest. If Modal expired the call's output, the
        manifest is read from the volume (pass `job_id`)."""
        require_credentials()
        call = modal.FunctionCall.from_id(call_id)
        started = time.monotonic()
        while True:
            try:
                return Manifest.model_validate(call.get(timeout=self.poll_s))
            except TimeoutError:
                elapsed = time.monotonic() - started
                if on_poll is not None:
                    on_poll(elapsed)
                if timeout is not None and elapsed > timeout:
                    raise TimeoutError(f"Modal call {call_id} not finished after {timeout}s") from None
            except modal.exception.OutputExpiredError:
                manifest = self.manifest_from_volume(job_id) if job_id else None
                if manifest is None:
                    raise ModalOutputExpired(f"Modal call {call_id}'s output expired and the volume "
                                       f"has no finished job {job_id}") from None
                return manifest

    def run(self, spec: TrainingSpec, inputs: dict[str, Any], *, timeout: float | None = None) -> Manifest:
        return self.attach(self.submit(spec, inputs), job_id=spec.job_id, timeout=timeout)

    def run_effect(self, spec: TrainingSpec, inputs: dict[str, Any], ctx: Any, *,
                   timeout: float | None = None) -> Manifest:
        """Inside a `train` effect handler: spawn once and `ctx.report` the FunctionCall id
        (TrainingJobSubmitted), so a resumed run re-attaches by `ctx.call_id` instead of
        spawning again. A call that ended without a manifest is re-spawned: the volume
        job resumes from its checkpoint or returns its DONE manifest."""
        from sia.events.types import TrainingJobSubmitted

        if ctx.call_id is not None:
            try:
                return self.attach(ctx.call_id, job_id=spec.job_id, timeout=timeout)
            except (modal.exception.NotFoundError, ModalOutputExpired):
                manifest = self.manifest_from_volume(spec.job_id)
                if manifest is not None:
                    return manifest
        call_id = self.submit(spec, inputs)
        ctx.report(TrainingJobSubmitted(effect_id=ctx.effect_id, job_id=spec.job_id,
                                        backend=self.backend, call_id=call_id))
        return self.attach(call_id, job_id=spec.job_id, timeout=timeout)

    def _volume(self) -> Any:
        require_credentials()
        return modal.Volume.from_name(VOLUME_NAME, environment_name=self.environment)

    def manifest_from_volume(self, job_id: str) -> Manifest | None:
        vol = self._volume()
        try:
            done = b"".join(vol.read_file(f"jobs/{job_id}/DONE"))
            body = b"".join(vol.read_file(f"jobs/{job_id}/manifest.json"))
        except (FileNotFoundError, modal.exception.NotFoundError):
            return None
        from sia.events.canonical import content_hash

        manifest = Manifest.model_validate_json(body)
        if done.decode().strip() != content_hash(manifest.model_dump(mode="json")):
            raise JobError(f"volume job {job_id[:12]}: DONE does not match manifest.json")
        return manifest

    def fetch_adapter(self, manifest: Manifest, dest: Path) -> Path:
        """Download a finished job's adapter files from the volume, checking each sha256."""
        vol = self._volume()
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name, sha in manifest.files.items():
            data = b"".join(vol.read_file(f"jobs/{manifest.job_id}/adapter/{name}"))
            atomic_write(dest / name, data)
            if file_sha256(dest / name) != sha:
                raise JobError(f"adapter file {name} of job {manifest.job_id[:12]} does not match its hash")
        return dest
