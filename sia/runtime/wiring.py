"""Which effect handlers serve a run, chosen from its recorded config, so `resume`,
`fork` and `replay` of a run use the same backends it was started with."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sia.core.effect_models import EpisodeRef
from sia.core.events.types import RunConfig, TaskIdentity
from sia.effects.base import HandlerRegistry
from sia.runtime.settings import Settings, provider_of
from sia.store.home import blobs_path, sia_home

if TYPE_CHECKING:
    from sia.tasks.loader import Task

TARGETS = ("tiny",)
TRAINERS = ("local", "modal")


class BackendUnavailable(ValueError):
    pass


def handlers_for(config: RunConfig, task: TaskIdentity | None = None, *,
                 home: Path | None = None, settings: Settings | None = None) -> HandlerRegistry:
    roles = {config.meta, config.feedback, config.target, config.trainer}
    if roles == {"deterministic"}:
        from sia.effects.deterministic import deterministic_registry

        return deterministic_registry()
    if "deterministic" in roles:
        raise BackendUnavailable("the deterministic backends only run together (meta, feedback, "
                                 "target and trainer all 'deterministic')")
    if task is None:
        raise BackendUnavailable("a run needs its task to be served")
    if config.target not in TARGETS and not config.target.startswith("vllm:"):
        raise BackendUnavailable(f"unknown target {config.target!r} (known: tiny, vllm:MODEL)")
    if config.trainer not in TRAINERS:
        raise BackendUnavailable(f"unknown trainer {config.trainer!r} (known: {', '.join(TRAINERS)})")
    if config.trainer == "modal":
        from sia.train.modal_app import modal_credentials_present

        if not modal_credentials_present():
            raise BackendUnavailable(
                "trainer 'modal' needs Modal credentials: set MODAL_TOKEN_ID and "
                "MODAL_TOKEN_SECRET (or run `modal token new`), then deploy the trainer once "
                "with `modal deploy -m sia.train.modal_app`")
    require_sandbox(config)
    home = home or sia_home()
    settings = settings or Settings()
    served = open_task(task, home)

    from sia.effects.episode import EpisodeHandler, SmokeCheck
    from sia.effects.evaluate import EvaluateHandler
    from sia.effects.held_out import HeldOutTestHandler
    from sia.effects.targets import TargetPool
    from sia.effects.train import TrainHandler
    from sia.store.blobs import FileBlobStore

    model, backend = _target(config.target, served, home, settings)
    targets = TargetPool(backend, home / "adapters")
    check = SmokeCheck(served, targets, FileBlobStore(blobs_path(home)), isolation=config.sandbox)
    registry = HandlerRegistry(name=f"{config.meta}/{config.feedback}/{config.target}/{config.trainer}")
    from sia.agents.tools import DraftRunner

    draft = DraftRunner(served, targets, isolation=config.sandbox)
    registry.register(_meta(config.meta, served, check, settings, draft))
    registry.register(_feedback(config.feedback, served, check, settings, draft, dev_rewards_in(home),
                                target=config.target))
    registry.register(EpisodeHandler(served, targets, isolation=config.sandbox))
    registry.register(EvaluateHandler(served, isolation=config.sandbox))  # code answers: the same choice
    registry.register(HeldOutTestHandler(served, targets, isolation=config.sandbox))
    registry.register(TrainHandler(served, model, home, backend=config.trainer))
    registry.close_with(targets.close)
    return registry


def require_sandbox(config: RunConfig) -> None:
    """Refuse, before anything runs, a run whose harness isolation this machine cannot give.

    There is no silent downgrade: the weaker process sandbox runs only when the run's
    config names it, and that choice is recorded with the config.
    """
    if config.sandbox != "bwrap":
        return
    from sia.harness.bwrap import SandboxUnavailable, require_bwrap

    try:
        require_bwrap()
    except SandboxUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None


def open_task(identity: TaskIdentity, home: Path) -> Task:
    from sia.tasks.loader import TaskError, load_task

    try:
        task = load_task(identity.source or identity.name,
                         data=Path(identity.data) if identity.data else None,
                         cache=home / "tasks")
    except TaskError as exc:
        raise BackendUnavailable(f"task {identity.name}: {exc}") from None
    if task.identity().task_hash != identity.task_hash:
        raise BackendUnavailable(
            f"task {identity.name} changed since this run recorded it (hash "
            f"{identity.task_hash[:12]} recorded, {task.identity().task_hash[:12]} now)")
    return task


def _target(target: str, task: Task, home: Path, settings: Settings) -> tuple[Any, Any]:
    """The base model's identity (for training) and how episodes reach it."""
    from sia.effects.targets import local_backend, vllm_backend

    if target == "tiny":
        tiny = TinyModelSource(task, home / "models")
        return tiny, local_backend(tiny.path)
    model = target.partition(":")[2]
    vllm = settings.provider_settings("vllm")
    if not model or not vllm.get("base_url"):
        raise BackendUnavailable(f"target {target!r} needs a model name and base_url in "
                                 "[providers.vllm] of sia.toml (the vLLM server's address)")
    return RemoteModelSource(model, vllm), vllm_backend(model, vllm)


class RemoteModelSource:
    """A model served remotely; trained locally only from a local copy (`model_dir`)."""

    def __init__(self, model: str, settings: dict[str, Any]) -> None:
        from sia.core.events.canonical import content_hash

        self.model_id = model
        self.revision: str | None = settings.get("revision")
        self.model_hash = content_hash({"model": model, "revision": self.revision})
        self.path = settings.get("model_dir")

    def model(self) -> RemoteModelSource:
        return self


class TinyModelSource:
    """The embedded target model, built offline from the task's public text on first use."""

    SEED = 0

    def __init__(self, task: Task, root: Path) -> None:
        self.task, self.root = task, root
        self._built: Any = None
        self._lock = threading.Lock()

    def model(self) -> Any:
        with self._lock:
            if self._built is None:
                from sia.train.tiny import build_tiny_model

                self._built = build_tiny_model(self.task.pretraining_corpus(), seed=self.SEED,
                                               root=self.root)
            return self._built

    def path(self) -> Path:
        return Path(self.model().path)


def _meta(role: str, task: Task, check: Any, settings: Settings, draft: Any = None) -> Any:
    name, model = provider_of(role)
    if name == "builtin":
        from sia.agents.builtin import BuiltinMeta

        return BuiltinMeta(lambda request: task, check)
    from sia.agents.llm import LLMMeta

    chosen = _model(name, model)
    return LLMMeta(_provider(name, settings), model=chosen, task=task, validate=check, draft=draft)


def _feedback(role: str, task: Task, check: Any, settings: Settings, draft: Any = None,
              dev_rewards: Any = None, target: str | None = None) -> Any:
    from sia.effects.train import reward_shape_of

    def shape_of(episodes: Sequence[EpisodeRef], blobs: Any) -> dict[str, Any]:
        return reward_shape_of(episodes, blobs, task)

    name, model = provider_of(role)
    if name == "builtin":
        from sia.agents.builtin import BuiltinFeedback, HarnessContext

        examples = task.public_examples()
        context = HarnessContext(examples_public=bool(examples),
                                 context_tokens=_tiny_context(task) if target == "tiny" else None,
                                 labels_are_lists=any(isinstance(e.get("label"), list) for e in examples))
        return BuiltinFeedback(lambda request: {e.sample_id: task.options_of(e.sample_id)
                                                for e in request.episodes}, shape_of, context)
    from sia.agents.llm import LLMFeedback

    chosen = _model(name, model)
    return LLMFeedback(_provider(name, settings), model=chosen, task=task, validate=check,
                       reward_shape_of=shape_of, draft=draft, dev_rewards=dev_rewards)


def _tiny_context(task: Task) -> int:
    """The embedded model's context in tokens, as `TinyModelSource` will build it for `task`."""
    from sia.train.tiny import config_for

    return config_for(task.pretraining_corpus()).max_positions


def dev_rewards_in(home: Path) -> Any:
    """A run's dev reward per sample, by scored generation, read from the home's store: what
    the Feedback Agent's compare_generations tool shows (its results are journaled)."""

    def dev_rewards(run_id: str) -> dict[int, dict[str, float]]:
        from sia.runtime.loop import load_state
        from sia.store.sqlite import SqliteEventStore

        store = SqliteEventStore.open_home(home)
        try:
            state = load_state(store, run_id)
        finally:
            store.close()
        dev = state.task.dev_ids if state.task is not None else ()
        return {g.index: dict(zip(dev, g.rewards[: len(dev)])) for g in state.generations if g.rewards}

    return dev_rewards


def _provider(name: str, settings: Settings) -> Any:
    from sia.llm import MissingCredentials, get_provider

    try:
        provider = get_provider(name, **settings.provider_settings(name))
        provider.check_credentials()
    except (ValueError, TypeError, MissingCredentials) as exc:
        raise BackendUnavailable(str(exc)) from None
    return provider


def _model(name: str, model: str | None) -> str:
    from sia.llm import DEFAULT_MODELS, provider_names

    if name not in provider_names():
        raise BackendUnavailable(f"unknown LLM provider {name!r}; known: builtin, "
                                 f"{', '.join(provider_names())}")
    chosen = model or DEFAULT_MODELS.get(name)
    if not chosen:
        raise BackendUnavailable(f"provider {name!r} needs a model: set it as '{name}:MODEL'")
    return chosen
