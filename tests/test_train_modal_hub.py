"""The Modal job's hub download, against a loopback stand-in for huggingface.co.

The stand-in answers the two requests `snapshot_download` makes for a pinned commit, as
the hub does: the recursive tree listing (`/api/models/<repo>/tree/<sha>`) and each
file's `/<repo>/resolve/<sha>/<file>` (HEAD with X-Repo-Commit / ETag, then GET). It
serves the tiny model as repository "openai/gpt-oss-20b" at one commit, with gpt-oss's
extra weight copies under original/ and metal/ as decoys. The job body runs in a
subprocess whose HF_ENDPOINT points at the stand-in, the way a user's machine points at
the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.test_train_job import make_fixture, make_spec

pytestmark = pytest.mark.slow

REPO = "openai/gpt-oss-20b"
COMMIT = "6cee5e81ee83917806bbde320786a8fb61efebee"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class StandInHub:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _route(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                tree = f"/api/models/{REPO}/tree/{COMMIT}"
                resolve = f"/{REPO}/resolve/{COMMIT}/"
                if path == tree:
                    entries = [{"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
                               for name, data in sorted(hub.files.items())]
                    self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)
                elif path.startswith(resolve) and path[len(resolve):] in hub.files:
                    data = hub.files[path[len(resolve):]]
                    self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{_git_oid(data)}"',
                                           "Content-Type": "application/octet-stream"}, body)
                elif path.startswith(f"/api/models/{REPO}/tree/"):  # the hub's answer to an unknown commit
                    revision = path.rpartition("/")[2]
                    self._send(404, json.dumps({"error": f"Invalid rev id: {revision}"}).encode(),
                               {"X-Error-Code": "RevisionNotFound",
                                "X-Error-Message": f"Invalid rev id: {revision}"}, body)
                else:
                    self._send(404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"}, body)

            def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._route(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


_JOB = """
import json, sys
from sia.train.modal_app import train_body
spec, inputs = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps(train_body(spec, inputs)))
"""


def _run_job(hub: StandInHub, root: Path, spec_json: str, inputs: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "SIA_MODAL_VOLUME_ROOT": str(root),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-c", _JOB, spec_json, json.dumps(inputs)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_fixture(tmp_path_factory.mktemp("hub-fixture"))


def test_the_job_downloads_the_pinned_commit_and_only_the_files_it_loads(fx: dict, tmp_path: Path) -> None:
    model_dir = Path(fx["model"].path)
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    decoys = {"original/model.safetensors": b"\0" * 4096, "original/config.json": b"{}",
              "metal/model.bin": b"\0" * 4096, "README.md": b"# gpt-oss-20b\n"}
    spec = make_spec(fx, base_model_id=REPO)
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_revision": COMMIT}
    with StandInHub(files | decoys) as hub:
        done = _run_job(hub, tmp_path / "vol", spec.to_json(), inputs)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(done.stdout.strip().splitlines()[-1])
    assert manifest["job_id"] == spec.job_id

    fetched = {path.rpartition(f"/{COMMIT}/")[2] for method, path in hub.requests if "/resolve/" in path}
    assert fetched == set(files)  # no original/, metal/ or README.md
    assert all(COMMIT in path for _, path in hub.requests)  # every request names the pinned commit
    snapshot = tmp_path / "vol" / "hf" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert {p.name for p in snapshot.iterdir()} == set(files)


def test_a_revision_the_hub_does_not_have_fails_the_job(fx: dict, tmp_path: Path) -> None:
    spec = make_spec(fx, base_model_id=REPO)
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_revision": "0" * 40}
    with StandInHub({}) as hub:
        done = _run_job(hub, tmp_path / "vol", spec.to_json(), inputs)
    assert done.returncode != 0
    assert "RevisionNotFoundError" in done.stderr and ("0" * 40) in done.stderr
    assert not (tmp_path / "vol" / "jobs" / spec.job_id / "DONE").exists()


_SIZE = """
import json, sys
from sia.train.modal_app import choose_function, hub_model_config
name, plan = choose_function(hub_model_config(sys.argv[1], sys.argv[2]), lora_rank=32)
print(json.dumps({"function": name, "gpus": plan.gpus}))
"""


def test_the_submitter_sizes_a_hub_model_from_its_config_alone(tmp_path: Path) -> None:
    from tests.test_gpu_plan import GPT_OSS_120B

    weights = {f"model-{i:05d}-of-00014.safetensors": b"\0" * 64 for i in range(15)}
    with StandInHub({"config.json": json.dumps(GPT_OSS_120B).encode()} | weights) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        done = subprocess.run([sys.executable, "-c", _SIZE, REPO, COMMIT], env=env, capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"function": "train_h100x8", "gpus": 8}
    assert {path for _, path in hub.requests} == {f"/{REPO}/resolve/{COMMIT}/config.json"}  # no weights


_PREFETCH_THEN_TRAIN = """
import json, sys, warnings
from sia.train.modal_app import download_model, train_body
warnings.simplefilter("ignore")
if sys.argv[1] == "download":
    print(download_model.local(sys.argv[2], sys.argv[3]))
else:
    print(json.dumps(train_body(sys.argv[2], json.loads(sys.argv[3]))))
"""


def test_a_prefetched_model_trains_with_the_hub_gone(fx: dict, tmp_path: Path) -> None:
    model_dir = Path(fx["model"].path)
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    env = {**os.environ, "SIA_MODAL_VOLUME_ROOT": str(tmp_path / "vol"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    run = {"env": env, "capture_output": True, "text": True, "timeout": 600,
           "cwd": Path(__file__).resolve().parents[1]}
    with StandInHub(files | {"metal/model.bin": b"\0" * 64}) as hub:
        fetched = subprocess.run([sys.executable, "-c", _PREFETCH_THEN_TRAIN, "download", REPO, COMMIT],
                                 **run | {"env": env | {"HF_ENDPOINT": hub.url}})
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert {p.name for p in Path(fetched.stdout.strip().splitlines()[-1]).iterdir()} == set(files)

    spec = make_spec(fx, base_model_id=REPO)
    inputs = {"rollouts_jsonl": fx["data"].read_text(), "model_revision": COMMIT}
    trained = subprocess.run([sys.executable, "-c", _PREFETCH_THEN_TRAIN, "train", spec.to_json(),
                              json.dumps(inputs)], **run | {"env": env | {"HF_ENDPOINT": hub.url}})
    assert trained.returncode == 0, trained.stderr[-3000:]  # the stand-in is shut down by now
    assert json.loads(trained.stdout.strip().splitlines()[-1])["job_id"] == spec.job_id
