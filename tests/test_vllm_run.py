"""A whole WH run whose target is served remotely by vLLM: episodes sample through the
`RemoteBackend`'s HTTP client with exact token ids, the trained adapter is published to the server
by name, and the next generation samples from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sia.tasks.loader import load_task
from sia.testing.vllm_server import VLLMServer
from sia.train.tiny import build_tiny_model
from tests.cli import sia

pytestmark = pytest.mark.slow


def test_a_run_against_a_vllm_server_trains_and_publishes_its_adapter(tmp_path: Path) -> None:
    corpus = load_task("wordcat", cache=tmp_path / "tasks").pretraining_corpus()
    tiny = build_tiny_model(corpus, seed=0, root=tmp_path / "models")
    home = tmp_path / "home"
    home.mkdir()
    shared = tmp_path / "shared-adapters"
    with VLLMServer(tiny.path, served_name="wordcat-tiny") as server:
        (home / "sia.toml").write_text(
            f'[roles]\ntarget = "vllm:wordcat-tiny"\n\n[providers.vllm]\n'
            f'base_url = "{server.api_base}"\nshared_root = "{shared}"\nmodel_dir = "{tiny.path}"\n')
        result = sia(home, "run", "--task", "wordcat", "--max-gen", "3", "--quiet",
                     env={"ANTHROPIC_API_KEY": ""}, timeout=600)
        adapters = server.adapters
        served = {body["model"] for body in server.completion_requests}
    run = result.stdout.split()[-1]
    lines = sia(home, "log", run, "--type", "AdapterCheckpointed", "--json").stdout.splitlines()
    (checkpoint,) = [json.loads(line)["payload"] for line in lines]
    name = f"sia-{checkpoint['adapter_hash'][:16]}"
    assert name in adapters and Path(adapters[name]).parent == shared
    assert served == {"wordcat-tiny", name}
    config = json.loads(sia(home, "show", run, "--json").stdout)["config"]
    assert config["target"] == "vllm:wordcat-tiny"
