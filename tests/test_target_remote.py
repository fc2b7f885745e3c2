"""The remote (vLLM) target backend against a vLLM stand-in serving a real tiny model and adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import json  # noqa: E402
import shutil  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from sia.harness.backends import SamplingParams, TargetBackend  # noqa: E402
from sia.harness.gateway import ModelGateway  # noqa: E402
from sia.harness.runner import UnixConnection  # noqa: E402
from sia.target.local import LocalBackend  # noqa: E402
from sia.target.remote import RemoteBackend, publish_adapter, server_version, stage_adapter  # noqa: E402
from sia.testing.vllm_server import NO_CHAT_TEMPLATE, VLLMServer  # noqa: E402
from sia.train.tiny import TinyModel, build_tiny_model  # noqa: E402

CORPUS = ["word: apple answer: fruit", "word: cat answer: animal", "word: red answer: color",
          "word: plum answer: fruit", "word: dog answer: animal", "word: blue answer: color"]
PROMPTS = ["word: apple answer:", "word: dog", "word: blue answer:"]
BASE = "tiny-base"
NO_KEY = "SIA_TEST_NO_SUCH_KEY"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_model(CORPUS, seed=0, root=tmp_path_factory.mktemp("tiny"), pretrain_steps=40)


@pytest.fixture(scope="module")
def local(tiny: TinyModel) -> LocalBackend:
    return LocalBackend(tiny.path)


@pytest.fixture(scope="module")
def server(tiny: TinyModel) -> Iterator[VLLMServer]:
    with VLLMServer(tiny.path, served_name=BASE) as srv:
        yield srv


@pytest.fixture(scope="module")
def adapter_dir(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (seeded) non-zero weights, as `save_pretrained` writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters") / "step-1"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny.path),
                           LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out)
    return out


def remote(srv: VLLMServer, adapter: str | None = None) -> RemoteBackend:
    return RemoteBackend(srv.base_url + "/v1", BASE, adapter=adapter, api_key_env=NO_KEY, timeout=60)


def greedy(backend: LocalBackend, prompt: str, max_tokens: int = 4) -> tuple[list[int], object, str, str]:
    """The local greedy sample; logprobs compare approximately (a batch of n rounds differently)."""
    s = backend.sample(prompt, max_tokens=max_tokens, temperature=0.0, n=1, seed=0)[0]
    return s.token_ids, pytest.approx(s.logprobs, abs=1e-5), s.text, s.finish_reason


def test_generations_carry_exact_tokens_prompt_major(server: VLLMServer, local: LocalBackend) -> None:
    backend = remote(server)
    assert isinstance(backend, TargetBackend) and backend.name == BASE
    params = SamplingParams(max_tokens=4, temperature=1.0, n=2, seed=5)
    generations = backend.generate(PROMPTS, params)
    assert len(generations) == 6
    sent = server.completion_requests[-1]
    assert sent["prompt"] == PROMPTS and sent["n"] == 2 and sent["seed"] == 5
    assert sent["return_token_ids"] is True and sent["logprobs"] == 1 and sent["model"] == BASE
    for index, generation in enumerate(generations):
        prompt = PROMPTS[index // 2]
        assert generation.prompt_token_ids == local.tokenizer(prompt)["input_ids"]
        assert generation.logprobs is not None and len(generation.logprobs) == len(generation.token_ids)
        assert all(p <= 0.0 for p in generation.logprobs)
        assert generation.text == local.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        assert local.tokenizer.eos_token_id not in generation.token_ids
    # choice i*n+j is prompt i's j-th sample: the same as asking for prompt i alone (seed + i)
    for i, prompt in enumerate(PROMPTS):
        alone = backend.generate([prompt], params.model_copy(update={"seed": 5 + i}))
        assert alone == generations[2 * i: 2 * i + 2]
    assert backend.generate(PROMPTS, params) == generations
    cut = backend.generate(["word:"], SamplingParams(max_tokens=1, temperature=0.0))[0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == 1


def test_the_eos_vllm_returns_is_dropped_like_the_local_backend(server: VLLMServer,
                                                                local: LocalBackend) -> None:
    eos = local.tokenizer.eos_token_id
    raw = httpx.post(server.base_url + "/v1/completions",
                     json={"model": BASE, "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0,
                           "logprobs": 1, "return_token_ids": True, "ignored_extra": 1}).json()
    choice = raw["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert choice["token_ids"][-1] == eos and len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])
    ids, logprobs, text, reason = greedy(local, PROMPTS[0])
    assert choice["token_ids"] == [*ids, eos] and reason == "stop"
    generation = remote(server).generate([PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0.0))[0]
    assert (generation.token_ids, generation.logprobs, generation.text) == (ids, logprobs, text)


def test_greedy_matches_the_local_backend(server: VLLMServer, local: LocalBackend) -> None:
    generations = remote(server).generate(PROMPTS, SamplingParams(max_tokens=5, temperature=0.0, n=2, seed=9))
    for index, generation in enumerate(generations):
        prompt = PROMPTS[index // 2]
        assert (generation.token_ids, generation.logprobs, generation.text,
                generation.finish_reason) == greedy(local, prompt, 5)
    word = generations[0].text.split()[0]
    stopped = remote(server).generate([PROMPTS[0]], SamplingParams(max_tokens=5, temperature=0.0,
                                                                   stop=(word,)))[0]
    local_stopped = local.sample(PROMPTS[0], max_tokens=5, temperature=0.0, n=1, seed=0, stop=[word])[0]
    assert stopped.finish_reason == "stop" and word not in stopped.text
    assert (stopped.token_ids, stopped.text) == (local_stopped.token_ids, local_stopped.text)


def test_a_published_adapter_is_served_by_name(server: VLLMServer, local: LocalBackend, tiny: TinyModel,
                                               adapter_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    name = publish_adapter(server.base_url, "run-a-step-1", adapter_dir, shared_root=shared,
                           api_key_env=NO_KEY)
    staged = shared / "run-a-step-1"
    assert name == "run-a-step-1" and (staged / "adapter_config.json").is_file()
    assert server.adapters == {name: str(staged.resolve())}
    listed = httpx.get(server.base_url + "/v1/models").json()["data"]
    assert [(m["id"], m["parent"]) for m in listed] == [(BASE, None), (name, BASE)]

    tuned = remote(server, adapter=name)
    assert tuned.name == name
    adapted = LocalBackend(tiny.path, adapter_dir)
    generations = tuned.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=0.0))
    assert server.completion_requests[-1]["model"] == name
    for prompt, generation in zip(PROMPTS, generations, strict=True):
        assert (generation.token_ids, generation.logprobs, generation.text,
                generation.finish_reason) == greedy(adapted, prompt)
        assert generation.logprobs != greedy(local, prompt)[1]  # the adapter changes the model

    loads = len([r for r in server.requests if r.path == "/v1/load_lora_adapter"])
    assert publish_adapter(server.base_url, name, adapter_dir, shared_root=shared, api_key_env=NO_KEY) == name
    assert len([r for r in server.requests if r.path == "/v1/load_lora_adapter"]) == loads + 1
    assert server.adapters == {name: str(staged.resolve())}
    assert tuned.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=0.0)) == generations

    other = tmp_path / "other"
    other.mkdir()
    for path in adapter_dir.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    (other / "adapter_config.json").write_text((adapter_dir / "adapter_config.json").read_text() + "\n")
    with pytest.raises(FileExistsError, match="different adapter"):
        stage_adapter(other, shared, name)
    # the same name from another path: the server keeps the old weights, so this is refused
    with pytest.raises(RuntimeError, match="already serves an adapter named"):
        publish_adapter(server.base_url, name, adapter_dir, shared_root=None, api_key_env=NO_KEY)


def test_an_unknown_adapter_is_a_clear_error(server: VLLMServer) -> None:
    with pytest.raises(RuntimeError, match=r"does not serve model 'never-published'.*publish_adapter"):
        remote(server, adapter="never-published").generate(["word:"], SamplingParams(max_tokens=1))


def test_a_server_without_token_ids_is_refused(tiny: TinyModel) -> None:
    with VLLMServer(tiny.path, served_name=BASE, return_token_ids_supported=False) as old:
        with pytest.raises(RuntimeError, match=r"exact sampled tokens.*vLLM >= 0\.12\.0.*return_token_ids"):
            remote(old).generate(["word:"], SamplingParams(max_tokens=2))


def test_publishing_fails_clearly(tiny: TinyModel, adapter_dir: Path, tmp_path: Path) -> None:
    with VLLMServer(tiny.path, served_name=BASE, runtime_lora_updating=False) as static:
        with pytest.raises(RuntimeError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            publish_adapter(static.base_url, "a", adapter_dir, shared_root=None, api_key_env=NO_KEY)
        gone = static.base_url
    with pytest.raises(RuntimeError, match="cannot reach the vLLM server"):
        publish_adapter(gone, "a", adapter_dir, shared_root=None, api_key_env=NO_KEY, timeout=5)
    with pytest.raises(RuntimeError, match="cannot reach the target server"):
        RemoteBackend(gone, BASE, api_key_env=NO_KEY, timeout=5).generate(["x"], SamplingParams())
    with VLLMServer(tiny.path, served_name=BASE) as srv:
        unreadable = tmp_path / "not-on-the-server"  # what a server without the shared mount sees
        with pytest.raises(RuntimeError, match=r"could not load adapter 'a'.*HTTP 404.*No adapter found"):
            publish_adapter(srv.base_url, "a", unreadable, shared_root=None, api_key_env=NO_KEY)


def test_the_api_key_comes_from_the_environment(tiny: TinyModel, adapter_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_TEST_VLLM_KEY", "sk-vllm")
    monkeypatch.setenv("SIA_TEST_WRONG_KEY", "sk-wrong")
    with VLLMServer(tiny.path, served_name=BASE, api_key="sk-vllm") as srv:
        assert publish_adapter(srv.base_url, "k", adapter_dir, shared_root=tmp_path,
                               api_key_env="SIA_TEST_VLLM_KEY") == "k"
        backend = RemoteBackend(srv.base_url, BASE, adapter="k", api_key_env="SIA_TEST_VLLM_KEY")
        assert len(backend.generate(["word:"], SamplingParams(max_tokens=1))) == 1
        with pytest.raises(RuntimeError, match="refused the API key"):
            RemoteBackend(srv.base_url, BASE, api_key_env="SIA_TEST_WRONG_KEY").generate(
                ["word:"], SamplingParams(max_tokens=1))


def post(socket_path: Path, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """A harness's call: HTTP over the episode's Unix socket."""
    connection = UnixConnection(str(socket_path), timeout=60)
    try:
        connection.request("POST", "/v1" + route, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


def test_the_gateway_records_token_ids_from_a_remote_backend(server: VLLMServer, local: LocalBackend) -> None:
    with ModelGateway(remote(server)) as gateway:
        path = gateway.open_episode("ep-remote", seed=3)
        reply = post(path, "/completions", {"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "n": 2})
        calls = gateway.close_episode("ep-remote")
    ids, logprobs, text, reason = greedy(local, PROMPTS[0])
    assert reply["model"] == BASE and [c["text"] for c in reply["choices"]] == [text, text]
    assert [c.status for c in calls] == [200]
    for generation in calls[0].generations:
        assert generation.prompt_token_ids == local.tokenizer(PROMPTS[0])["input_ids"]
        assert (generation.token_ids, generation.logprobs, generation.finish_reason) == (ids, logprobs, reason)


TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}word: {{ m['content'] }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %} answer:{% endif %}")
"""A chat template for the tiny model: one user turn renders as the corpus's prompt format."""
CHAT = [{"role": "system", "content": "classify"}, {"role": "user", "content": "apple"}]


def model_copy(tiny: TinyModel, root: Path, *, chat_template: str | None = None,
               stop_ids: list[int] | None = None) -> Path:
    """The tiny model with a chat template and/or more `eos_token_id`s in generation_config.json."""
    out = root / "model"
    shutil.copytree(tiny.path, out)
    if chat_template is not None:
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    if stop_ids is not None:
        config = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
        (out / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": stop_ids}),
                                                    encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def chat_server(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    with VLLMServer(model_copy(tiny, tmp_path_factory.mktemp("chat"), chat_template=TEMPLATE),
                    served_name=BASE) as srv:
        yield srv


def test_chat_goes_through_the_models_chat_template(chat_server: VLLMServer, local: LocalBackend) -> None:
    """vLLM renders the messages with the model's template and returns the exact token ids."""
    with ModelGateway(remote(chat_server)) as gateway:
        path = gateway.open_episode("ep-chat", seed=3)
        reply = post(path, "/chat/completions", {"messages": CHAT, "max_tokens": 4, "temperature": 0})
        calls = gateway.close_episode("ep-chat")
    ids, logprobs, text, reason = greedy(local, PROMPTS[0])  # the template renders PROMPTS[0]
    assert reply["choices"][0]["message"]["content"] == text
    (sent,) = chat_server.chat_requests
    assert sent["messages"] == CHAT and sent["return_token_ids"] is True and sent["logprobs"] is True
    assert sent["max_completion_tokens"] == 4 and chat_server.completion_requests == []
    (call,) = calls
    assert call.prompts == ["system: classify\nuser: apple\nassistant:"] and call.messages == CHAT
    (generation,) = call.generations
    assert generation.prompt_token_ids == local.tokenizer(PROMPTS[0])["input_ids"]
    assert (generation.token_ids, generation.logprobs, generation.text, generation.finish_reason) == (
        ids, logprobs, text, reason)
    assert generation.stop_token_id == local.tokenizer.eos_token_id


def test_a_model_without_a_chat_template_gets_the_plain_layout(server: VLLMServer) -> None:
    raw = httpx.post(server.base_url + "/v1/chat/completions", json={"model": BASE, "messages": CHAT})
    assert raw.status_code == 400 and raw.json()["error"] == {
        "message": NO_CHAT_TEMPLATE, "type": "BadRequestError", "param": None, "code": 400}
    backend = remote(server)
    server.clear()
    for _ in range(2):
        prompt = backend.render_chat(CHAT)
        (generation,) = backend.generate([prompt], SamplingParams(max_tokens=2, temperature=0.0))
        assert generation.prompt_token_ids and prompt == "system: classify\nuser: apple\nassistant:"
    assert len(server.chat_requests) == 1  # asked once, then remembered
    assert [body["prompt"] for body in server.completion_requests] == [[prompt], [prompt]]


def test_stop_token_ids_come_from_the_models_config(tiny: TinyModel, local: LocalBackend,
                                                    tmp_path: Path) -> None:
    """vLLM stops at every `eos_token_id` of generation_config.json (gpt-oss lists three); the
    one that ended the sample is recorded, since without a local model the trainer cannot know it."""
    eos, colon = local.tokenizer.eos_token_id, local.tokenizer.convert_tokens_to_ids(":")
    assert greedy(local, "word: dog", 5)[0] == [5, colon, 11]
    with VLLMServer(model_copy(tiny, tmp_path, stop_ids=[eos, colon]), served_name=BASE) as srv:
        raw = httpx.post(srv.base_url + "/v1/completions", json={
            "model": BASE, "prompt": "word: dog", "max_tokens": 5, "temperature": 0,
            "return_token_ids": True}).json()["choices"][0]
        assert (raw["token_ids"], raw["finish_reason"], raw["stop_reason"]) == ([5, colon], "stop", colon)
        (stopped,) = remote(srv).generate(["word: dog"], SamplingParams(max_tokens=5, temperature=0.0))
        (ended,) = remote(srv).generate([PROMPTS[0]], SamplingParams(max_tokens=5, temperature=0.0))
        (cut,) = remote(srv).generate(["word: dog"], SamplingParams(max_tokens=1, temperature=0.0))
    assert (stopped.token_ids, stopped.text, stopped.finish_reason, stopped.stop_token_id) == (
        [5], "answer", "stop", colon)
    assert (ended.token_ids, ended.stop_token_id) == ([11], eos)
    assert (cut.token_ids, cut.finish_reason, cut.stop_token_id) == ([5], "length", None)


def test_an_adapter_is_published_again_after_a_server_restart(tiny: TinyModel, adapter_dir: Path,
                                                              tmp_path: Path) -> None:
    """vLLM keeps runtime-loaded adapters in memory: after a restart the adapter is a 404
    (`param` "model"), which a backend that knows the adapter's files answers by publishing again."""
    params = SamplingParams(max_tokens=3, temperature=0.0)
    shared = tmp_path / "shared"
    with VLLMServer(tiny.path, served_name=BASE, lora_modules={"boot": adapter_dir}) as srv:
        name = publish_adapter(srv.base_url, "step-1", adapter_dir, shared_root=shared, api_key_env=NO_KEY)
        knows_files = RemoteBackend(srv.base_url, BASE, adapter=name, api_key_env=NO_KEY,
                                    adapter_dir=adapter_dir, shared_root=shared)
        before = knows_files.generate(PROMPTS, params)
        srv.restart()
        assert srv.adapters == {"boot": str(adapter_dir)}  # startup adapters come back, runtime ones do not
        gone = httpx.post(srv.base_url + "/v1/completions", json={"model": name, "prompt": "x"})
        assert gone.status_code == 404 and gone.json()["error"] == {
            "message": f"The model `{name}` does not exist.", "type": "NotFoundError",
            "param": "model", "code": 404}
        with pytest.raises(RuntimeError, match=rf"does not serve model '{name}'.*publish_adapter"):
            remote(srv, adapter=name).generate(PROMPTS, params)
        assert knows_files.generate(PROMPTS, params) == before
        assert srv.adapters == {"boot": str(adapter_dir), name: str((shared / name).resolve())}
        loads = [r.body for r in srv.requests if r.path == "/v1/load_lora_adapter"]
        assert [body["lora_name"] for body in loads] == [name, name]
        assert remote(srv, adapter="boot").generate(PROMPTS, params) == before  # same weights


def test_a_server_older_than_the_floor_is_refused(tiny: TinyModel, adapter_dir: Path) -> None:
    assert [server_version(v) for v in ("0.11.1", "0.12.0rc1", "v0.13", "0.10.2+cu128", "dev")] == [
        (0, 11, 1), (0, 12, 0), (0, 13, 0), (0, 10, 2), None]
    with VLLMServer(tiny.path, served_name=BASE, version="0.11.1") as old:
        with pytest.raises(RuntimeError, match=r"runs vLLM 0\.11\.1; sia needs vLLM >= 0\.12\.0"):
            publish_adapter(old.base_url, "a", adapter_dir, shared_root=None, api_key_env=NO_KEY)
        assert old.adapters == {}
    for version in ("0.12.0", None):  # None: a server with no /version is not refused
        with VLLMServer(tiny.path, served_name=BASE, version=version) as current:
            assert publish_adapter(current.base_url, "a", adapter_dir, shared_root=None,
                                   api_key_env=NO_KEY) == "a"


def test_the_run_wiring_builds_backends_that_republish(tiny: TinyModel, adapter_dir: Path,
                                                       tmp_path: Path) -> None:
    from sia.effects.targets import vllm_backend

    params = SamplingParams(max_tokens=3, temperature=0.0)
    with VLLMServer(tiny.path, served_name=BASE) as srv:
        make = vllm_backend(BASE, {"base_url": srv.api_base, "shared_root": str(tmp_path / "shared"),
                                   "api_key_env": NO_KEY})
        backend = make("ab" * 32, adapter_dir)
        before = backend.generate(PROMPTS, params)
        srv.restart()
        assert backend.generate(PROMPTS, params) == before
        assert list(srv.adapters) == [f"sia-{'ab' * 8}"]
