"""Training on Modal: H100 functions whose body is the same `run_job` as local training.

Deploy once with `modal deploy -m sia.train.modal_app`: that deploys one function per
supported GPU count (`train` on 1 H100, `train_h100x2`, `train_h100x4`, `train_h100x8`).
`ModalTrainer.submit` sizes the job from the base model's config.json
(`sia.train.gpu_plan`), spawns the function with that many GPUs and records the plan in
the inputs (the job writes it to `gpu_plan.json`); the FunctionCall id is what
TrainingJobSubmitted records as `call_id`, and `FunctionCall.from_id(call_id)`
re-attaches after a crash, whichever function it was.

The Volume `sia-adapters` (mounted at /vol) is the source of truth: a job lives in
`/vol/jobs/<job_id>/` exactly as a local job does (checkpoint, metrics.jsonl, adapter/,
manifest.json, DONE written last). A hub model is downloaded once into `/vol/hf`, at the
pinned revision and only the files loading needs (`HUB_ALLOW`/`HUB_IGNORE`).

Exactly one call trains a job, however many run at once: a call first claims the job
with an atomic put-if-absent in the `modal.Dict` `sia-job-claims` (`sia.train.job_claim`).
The winner trains and commits; every other call waits for its DONE and returns the
winner's manifest without writing anything to the job. A retried container of the
winning call (Modal retries on preemption or crash) resumes its own claim and the
checkpoint, which is committed while training (at most every `SIA_MODAL_COMMIT_S`
seconds); a winner whose heartbeat stopped for `SIA_MODAL_CLAIM_STALE_S` seconds is dead
and the job goes to the next claimant.

The function body runs locally too (`train.local(spec_json, inputs)`); then the volume
root is `$SIA_MODAL_VOLUME_ROOT`, claims are files under it and nothing talks to Modal.
"""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modal

from sia.core.events.canonical import canonical_json
from sia.train.gpu_plan import GpuPlan, plan_for
from sia.train.job import JobError, Manifest, atomic_write, load_manifest, run_job
from sia.train.job_claim import ClaimStore, FileClaimStore, Heartbeat, ModalDictClaimStore, claim_job, release
from sia.train.spec import TrainingSpec, file_sha256

APP_NAME = "sia-train"
FUNCTION_NAMES = {1: "train", 2: "train_h100x2", 4: "train_h100x4", 8: "train_h100x8"}
"""The deployed function for each H100 count of `sia.train.gpu_plan.GPU_COUNTS`."""
VOLUME_NAME = "sia-adapters"
VOLUME_MOUNT = "/vol"
CLAIMS_DICT = "sia-job-claims"
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

# What training loads from a hub repository: config, tokenizer and chat template, and the
# transformers-format safetensors at the repository root. gpt-oss repos also carry the
# same weights again under original/ (the reference implementation's format) and metal/
# (Apple's), which transformers never reads: every sub-folder is skipped.
HUB_ALLOW = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt")
HUB_IGNORE = ("*/*",)
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")

app = modal.App(APP_NAME)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*PINNED)
    .env({"HF_HOME": f"{VOLUME_MOUNT}/hf", "TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("sia")  # must stay last (files are added at container start)
)
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
_RETRIES = modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=10.0)
_FUNCTION_OPTIONS: dict[str, Any] = dict(image=image, timeout=6 * 3600, volumes={VOLUME_MOUNT: volume},
                                         retries=_RETRIES)


def volume_root() -> Path:
    return Path(os.environ.get("SIA_MODAL_VOLUME_ROOT") or VOLUME_MOUNT)


def _remote() -> bool:
    return not modal.is_local()


def _in_container(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if not _remote():
        return train_body(spec_json, inputs)
    claims = ModalDictClaimStore(modal.Dict.from_name(CLAIMS_DICT, create_if_missing=True))
    return train_body(spec_json, inputs, commit=volume.commit, reload=volume.reload, claims=claims,
                      owner=modal.current_function_call_id())


@app.function(gpu="H100", **_FUNCTION_OPTIONS)
def train(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run (or find) the job on 1 H100; returns its manifest as a dict.

    `inputs` (all optional but one data source):
      rollouts_jsonl       the training data inline (checked against spec.data_hash)
      data_path            or a path to it, relative to the volume root
      init_adapter_job     start from the adapter of that finished job on the volume
      init_adapter_files   or the init adapter inline: {file name: base64 bytes}
      model_dir            a model directory (relative to the volume root, or absolute);
                           default: `spec.base_model_id` from the Hugging Face hub at
                           `model_revision` (a commit sha, required), cached on the volume
      gpu_plan             the `GpuPlan` the submitter chose (recorded in gpu_plan.json)
    """
    return _in_container(spec_json, inputs)


@app.function(gpu="H100:2", **_FUNCTION_OPTIONS)
def train_h100x2(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """`train` on 2 H100s."""
    return _in_container(spec_json, inputs)


@app.function(gpu="H100:4", **_FUNCTION_OPTIONS)
def train_h100x4(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """`train` on 4 H100s."""
    return _in_container(spec_json, inputs)


@app.function(gpu="H100:8", **_FUNCTION_OPTIONS)
def train_h100x8(spec_json: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """`train` on 8 H100s (gpt-oss-120b)."""
    return _in_container(spec_json, inputs)


FUNCTIONS = {1: train, 2: train_h100x2, 4: train_h100x4, 8: train_h100x8}
"""The Modal function for each H100 count (keys: FUNCTION_NAMES' and gpu_plan.GPU_COUNTS)."""


@app.function(image=image, timeout=3 * 3600, volumes={VOLUME_MOUNT: volume}, retries=_RETRIES)
def download_model(model_id: str, revision: str) -> str:
    """Put a hub model on the volume from a CPU container, so GPU jobs do not pay H100
    time for the download: `modal run -m sia.train.modal_app::download_model --model-id
    openai/gpt-oss-120b --revision <commit sha>`. Returns the snapshot's path."""
    path = hub_snapshot(model_id, revision, volume_root())
    if _remote():
        volume.commit()
    return str(path)


def train_body(spec_json: str, inputs: dict[str, Any], *,
               commit: Callable[[], None] | None = None,
               reload: Callable[[], None] | None = None,
               claims: ClaimStore | None = None, owner: str | None = None) -> dict[str, Any]:
    """The job's manifest: found on the volume, trained here if this call wins the job's
    claim, or the winner's once it is DONE."""
    spec = TrainingSpec.from_json(spec_json)
    root = volume_root()
    if reload is not None:
        reload()  # see what earlier attempts or other containers committed
    job_dir = root / "jobs" / spec.job_id
    existing = load_manifest(job_dir)
    if existing is not None:
        return existing.model_dump(mode="json")

    store = claims if claims is not None else FileClaimStore(root / "claims")
    owner = owner or f"local-{uuid.uuid4().hex}"
    stale_s = float(os.environ.get("SIA_MODAL_CLAIM_STALE_S", "600"))
    poll_s = float(os.environ.get("SIA_MODAL_WAIT_POLL_S", "20"))
    while True:
        claim = claim_job(store, spec.job_id, owner, now=time.time(), stale_s=stale_s)
        if claim.won:
            break
        time.sleep(poll_s)  # another call trains this job: wait for its DONE
        if reload is not None:
            reload()
        existing = load_manifest(job_dir)
        if existing is not None:
            return existing.model_dump(mode="json")

    beat_s = float(os.environ.get("SIA_MODAL_CLAIM_BEAT_S", str(min(60.0, stale_s / 4))))
    try:
        with Heartbeat(store, claim.key(spec.job_id), beat_s):
            return _train_claimed(spec, root, job_dir, inputs, commit)
    except Exception:
        release(store, spec.job_id, claim)
        raise


def _train_claimed(spec: TrainingSpec, root: Path, job_dir: Path, inputs: dict[str, Any],
                   commit: Callable[[], None] | None) -> dict[str, Any]:
    job_dir.mkdir(parents=True, exist_ok=True)
    if inputs.get("gpu_plan"):
        _check_gpus(inputs["gpu_plan"])
        atomic_write(job_dir / "gpu_plan.json", canonical_json(GpuPlan(**inputs["gpu_plan"]).to_dict()))
    data_path = _materialise_data(spec, root, job_dir, inputs)
    init_dir = _materialise_init_adapter(root, job_dir, inputs)
    model_dir = _model_dir(spec, root, inputs)
    if commit is not None:
        commit()  # the downloaded model and the job's inputs survive a retry

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


def _check_gpus(plan: dict[str, Any]) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < int(plan["gpus"]):
        raise JobError(f"the job was planned for {plan['gpus']} GPUs but this container has "
                       f"{torch.cuda.device_count()}")


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
    return hub_snapshot(spec.base_model_id, inputs.get("model_revision"), root)


def hub_snapshot(model_id: str, revision: str | None, root: Path) -> Path:
    """The model's files at the pinned commit in the volume's hub cache, downloaded if
    missing; a complete snapshot needs no network."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, revision=pinned_revision(model_id, revision),
                                  cache_dir=str(root / "hf"), allow_patterns=list(HUB_ALLOW),
                                  ignore_patterns=list(HUB_IGNORE)))


def pinned_revision(model_id: str, revision: str | None) -> str:
    """The hub commit to train from: the run hashes it into `base_model_hash`, so it must
    name one immutable commit, not a branch that moves."""
    if not revision or not _COMMIT_SHA.fullmatch(revision):
        raise JobError(f"training {model_id} from the hub needs its revision pinned to a 40-hex commit "
                       f"sha (got {revision!r}): set `revision` in [providers.vllm] of sia.toml to the "
                       f"commit shown at https://huggingface.co/{model_id}/commits/main")
    return revision


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


def hub_model_config(model_id: str, revision: str) -> dict[str, Any]:
    """A hub model's config.json at a pinned commit (a few kB, no weights): what
    `ModalTrainer.submit` sizes the GPUs by."""
    import json

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(model_id, "config.json", revision=pinned_revision(model_id, revision))
    return json.loads(Path(path).read_text(encoding="utf-8"))


def choose_function(model_config: dict[str, Any] | None, *, lora_rank: int) -> tuple[str, GpuPlan | None]:
    """The deployed function a job runs on, and the plan that chose it (pure)."""
    if model_config is None:
        return FUNCTION_NAMES[1], None
    plan = plan_for(model_config, lora_rank=lora_rank)
    return FUNCTION_NAMES[plan.gpus], plan


class ModalTrainer:
    """Submit to / re-attach to the deployed `sia-train` app."""

    backend = BACKEND

    def __init__(self, *, app_name: str = APP_NAME, environment: str | None = None,
                 poll_s: float = 30.0) -> None:
        self.app_name = app_name
        self.environment = environment
        self.poll_s = poll_s
        self.last_plan: GpuPlan | None = None
        """The plan of the last `submit` (None: 1 H100, no config given)."""

    def _function(self, name: str) -> Any:
        require_credentials()
        return modal.Function.from_name(self.app_name, name, environment_name=self.environment)

    def submit(self, spec: TrainingSpec, inputs: dict[str, Any], *,
               model_config: dict[str, Any] | None = None) -> str:
        """Spawn the job on as many H100s as `model_config` (the base model's config.json)
        needs; returns the FunctionCall id to record as TrainingJobSubmitted.call_id.
        Without a config the job runs on 1 H100 (the embedded tiny model)."""
        name, plan = choose_function(model_config, lora_rank=spec.lora.rank)
        if plan is not None:
            inputs = {**inputs, "gpu_plan": plan.to_dict()}
        self.last_plan = plan
        try:
            call = self._function(name).spawn(spec.to_json(), inputs)
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

    def run(self, spec: TrainingSpec, inputs: dict[str, Any], *, timeout: float | None = None,
            model_config: dict[str, Any] | None = None) -> Manifest:
        return self.attach(self.submit(spec, inputs, model_config=model_config), job_id=spec.job_id,
                           timeout=timeout)

    def run_effect(self, spec: TrainingSpec, inputs: dict[str, Any], ctx: Any, *,
                   timeout: float | None = None, model_config: dict[str, Any] | None = None) -> Manifest:
        """Inside a `train` effect handler: spawn once and `ctx.report` the FunctionCall id
        (TrainingJobSubmitted), so a resumed run re-attaches by `ctx.call_id` instead of
        spawning again. A call that ended without a manifest is re-spawned: the volume
        job resumes from its checkpoint or returns its DONE manifest."""
        from sia.core.events.types import TrainingJobSubmitted

        if ctx.call_id is not None:
            try:
                return self.attach(ctx.call_id, job_id=spec.job_id, timeout=timeout)
            except (modal.exception.NotFoundError, ModalOutputExpired):
                manifest = self.manifest_from_volume(spec.job_id)
                if manifest is not None:
                    return manifest
        call_id = self.submit(spec, inputs, model_config=model_config)
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
        from sia.core.events.canonical import content_hash

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
