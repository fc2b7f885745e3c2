"""The dashboard's HTTP app: JSON read endpoints, a server-sent event stream, two actions.

Live updates tail the store: every `POLL_S` each open page's stream compares every run's
last seq (one indexed query per run) with what it last sent and, when a run appeared or
moved, tells the page, which then fetches only what changed (the folds in `Tails` advance
by the new events). Nothing re-reads a whole log to notice a commit.

Actions (fork, pause) write to the store, so they are refused unless the server was
started with `--allow-actions`, and even then only for a POST that carries this server's
random token (embedded in the page it served) from a page of this server's own origin:
a cross-site page can neither read the token nor pass the Origin check, and a request
naming another host (DNS rebinding) is refused before any route runs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sia.core.config import ConfigError
from sia.core.reducers.loop import FoldError
from sia.core.reducers.state import LoopState
from sia.interface.dashboard.pages import (
    episode_page,
    event_page,
    family_ids,
    find_episode,
    harness_diff,
    lineage,
    recorded_episode,
    run_page,
    runs_row,
    state_page,
    timeline_page,
)
from sia.interface.dashboard.tail import Tails
from sia.interface.views import score_series, scored_generations
from sia.runtime.loop import load_state
from sia.store.base import EventStore, LeaseHeld, StoreError, UnknownRun, new_holder
from sia.store.blobs import BlobMissing

STATIC = Path(__file__).parent / "static"
POLL_S = 0.25
"""How often the live stream looks at the store: a commit shows within ~POLL_S plus a fetch."""
EVENT_PAGE_MAX = 500


@dataclass(frozen=True)
class Settings:
    home: Path
    allow_actions: bool
    token: str
    fork: Callable[[EventStore, str, int, list[str]], str]
    """The CLI's fork (`sia.interface.cli.fork_run`), so a fork from the page is a `sia fork`."""
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")
    """Host names the server answers to. Anything else is refused, so a DNS-rebinding page
    (evil.example resolving to 127.0.0.1) can neither read runs nor fetch the token."""
    user_errors: tuple[type[Exception], ...] = ()
    """What `fork` raises for bad input (answered 400 with its message)."""


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise Refused(400, f"{name} must be an integer, not {raw!r}") from None


def create_app(store: EventStore, settings: Settings) -> Starlette:
    """The dashboard over `store`; the caller owns (and closes) the store."""
    tails = Tails(store)
    inherited: dict[str, int] = {}
    """Scored generations each fork inherited from its parent."""

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except UnknownRun as exc:
            raise Refused(404, str(exc)) from None
        except (StoreError, FoldError, BlobMissing) as exc:
            raise Refused(500, str(exc)) from None

    def runs() -> list[dict[str, Any]]:
        return [runs_row(r, tails.state(r.run_id)) for r in tails.runs()]

    def run(run_id: str) -> dict[str, Any]:
        state = tails.state(run_id)
        tree = lineage(tails.runs(), run_id)
        branches = []
        for member in family_ids(tree):
            member_state = tails.state(member)
            if member not in inherited:  # a fork point never moves: fold up to it once
                parent, at = member_state.parent_run_id, member_state.fork_seq
                inherited[member] = 0 if parent is None or at is None else scored_generations(
                    tails.read(lambda s: load_state(s, parent, upto=at)))
            branches.append(score_series(member, member_state, inherited[member]))
        return run_page(run_id, state, tree, branches)

    def timeline(run_id: str) -> dict[str, Any]:
        tl = tails.timeline(run_id)
        return timeline_page(tails.state(run_id), tl.clock.elapsed, tl.refused, tl.episodes,
                             tl.types, tl.first_stamp, tl.last_stamp, tl.investigations)

    def events(run_id: str, after: int, limit: int, types: frozenset[str]) -> dict[str, Any]:
        def read(s: EventStore) -> dict[str, Any]:
            s.get_run(run_id)
            page = event_page(s.read(run_id, after=after), types, limit)
            page["last_seq"] = s.last_seq(run_id)
            return page
        return tails.read(read)

    def state_at(run_id: str, at: int) -> dict[str, Any]:
        def read(s: EventStore) -> dict[str, Any]:
            last = s.last_seq(run_id)
            if not 1 <= at <= last:
                raise Refused(400, f"seq {at} is outside run {run_id}, whose events are seq 1 to {last}")
            return state_page(load_state(s, run_id, upto=at))
        return tails.read(read)

    def diff(run_id: str, a: int, b: int, other: str | None) -> dict[str, Any]:
        state_a = tails.state(run_id)
        state_b = tails.state(other) if other else state_a
        sides = []
        for name, state, index in ((run_id, state_a, a), (other or run_id, state_b, b)):
            if not 0 <= index < len(state.generations):
                raise Refused(400, f"run {name} has no generation {index} "
                                   f"(it has {len(state.generations)})")
            sides.append((f"{name} gen {index}", state.generations[index].harness_hash))
        texts = tails.read(lambda s: [s.blobs.get_text(h) for _, h in sides])
        return harness_diff(sides[0][0], texts[0], sides[1][0], texts[1])

    def episode(run_id: str, episode_id: str) -> dict[str, Any]:
        state = tails.state(run_id)
        found = find_episode(state, episode_id)
        if found is None:
            ref = tails.timeline(run_id).episodes.get(episode_id)
            event = tails.read(lambda s: s.event_at(run_id, ref.seq)) if ref else None
            if event is None:
                raise Refused(404, f"run {run_id} has no episode {episode_id}")
            found = recorded_episode(event)
        generation, recorded = found
        trajectory = None
        trajectory_hash = recorded.trajectory_hash
        if trajectory_hash:
            trajectory = json.loads(tails.read(lambda s: s.blobs.get_text(trajectory_hash)))
        sample, note = sample_fields(state, recorded.sample_id)
        return episode_page(state, generation, recorded, trajectory, sample, note)

    def sample_fields(state: LoopState, sample_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The sample's public fields from the run's task folder, or why they are not here."""
        from sia.runtime.wiring import BackendUnavailable, open_task

        if state.task is None:
            return None, "the run recorded no task"
        try:
            return open_task(state.task, settings.home).sample(sample_id), None
        except BackendUnavailable as exc:
            return None, f"the task cannot be opened here: {exc}"
        except Exception as exc:  # a task folder's own loader can fail in its own ways
            return None, f"the task cannot be opened here: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ actions

    def guard(request: Request) -> None:
        if not settings.allow_actions:
            raise Refused(403, "actions are disabled: this dashboard is read-only "
                               "(restart it with `sia serve --allow-actions` to fork or pause)")
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is None or origin.split("://", 1)[-1] != host:
            raise Refused(403, f"cross-site request refused (Origin {origin!r} is not this server, {host})")
        if request.headers.get("sec-fetch-site") not in (None, "same-origin"):
            raise Refused(403, "cross-site request refused (Sec-Fetch-Site is not same-origin)")
        if not secrets.compare_digest(request.headers.get("x-sia-token", ""), settings.token):
            raise Refused(403, "missing or wrong action token (reload the page)")

    def fork(run_id: str, at: int, assignments: list[str]) -> dict[str, Any]:
        with tails.locked() as s:
            new_id = settings.fork(s, run_id, at, assignments)
        return {"run_id": new_id, "resume": f"sia resume {new_id}"}

    def pause(run_id: str) -> dict[str, Any]:
        from sia.effects.base import HandlerRegistry
        from sia.runtime.loop import Runtime

        with tails.locked() as s:
            holder = new_holder()
            try:
                s.acquire_lease(run_id, holder, 10.0)
            except LeaseHeld as exc:
                raise Refused(409, f"{exc}; pause it with Ctrl-C in that terminal") from None
            try:
                state = load_state(s, run_id)
                if state.status != "running":
                    raise Refused(409, f"run {run_id} is {state.status}, not running: nothing to pause")
                Runtime(s, HandlerRegistry(), home=settings.home).pause(run_id, "paused from the dashboard")
            finally:
                s.release_lease(run_id, holder)
        return {"run_id": run_id, "status": "paused", "resume": f"sia resume {run_id}"}

    # ------------------------------------------------------------------ routes

    async def index(request: Request) -> Response:
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{TOKEN}}", settings.token if settings.allow_actions else "")
        page = page.replace("{{ACTIONS}}", "true" if settings.allow_actions else "false")
        return HTMLResponse(page, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'self'; "
                                           "img-src 'self' data:; frame-ancestors 'none'",
                                           "X-Frame-Options": "DENY"})

    def endpoint(read: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                return JSONResponse(await read(request), headers={"Cache-Control": "no-store"})
            except Refused as exc:
                return _error(exc.status, str(exc))
        return handler

    async def get_runs(request: Request) -> Any:
        return await blocking(runs)

    async def get_run(request: Request) -> Any:
        return await blocking(run, request.path_params["run_id"])

    async def get_timeline(request: Request) -> Any:
        return await blocking(timeline, request.path_params["run_id"])

    async def get_events(request: Request) -> Any:
        limit = max(1, min(EVENT_PAGE_MAX, _int(request, "limit", 100) or 100))
        types = frozenset(t for t in request.query_params.get("types", "").split(",") if t)
        return await blocking(events, request.path_params["run_id"], _int(request, "after", 0) or 0,
                              limit, types)

    async def get_state(request: Request) -> Any:
        at = _int(request, "at")
        if at is None:
            raise Refused(400, "state needs ?at=SEQ")
        return await blocking(state_at, request.path_params["run_id"], at)

    async def get_diff(request: Request) -> Any:
        a, b = _int(request, "a", 0), _int(request, "b")
        if a is None or b is None:
            raise Refused(400, "diff needs ?a=GEN&b=GEN")
        return await blocking(diff, request.path_params["run_id"], a, b,
                              request.query_params.get("other"))

    async def get_episode(request: Request) -> Any:
        return await blocking(episode, request.path_params["run_id"], request.path_params["episode_id"])

    async def post_pause(request: Request) -> Any:
        guard(request)
        return await blocking(pause, request.path_params["run_id"])

    async def post_fork(request: Request) -> Any:
        guard(request)
        try:
            body = await request.json()
            at, assignments = int(body["at"]), [str(x) for x in body.get("settings", [])]
        except (ValueError, KeyError, TypeError):
            raise Refused(400, 'fork needs a JSON body {"at": SEQ, "settings": ["key=value", ...]}') from None
        refused: tuple[type[Exception], ...] = (ConfigError, *settings.user_errors)
        try:
            return await blocking(fork, request.path_params["run_id"], at, assignments)
        except refused as exc:
            raise Refused(400, str(exc)) from None

    async def stream(request: Request) -> Response:
        """Server-sent events: `runs` when any run appears or moves, `run` when the watched
        run (`?run=ID`, which may not exist yet) commits."""
        watched = request.query_params.get("run")

        def heads() -> dict[str, int]:
            return {r.run_id: tails.last_seq(r.run_id) for r in tails.runs()}

        async def events() -> AsyncIterator[str]:
            sent: dict[str, int] | None = None
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                now = await run_in_threadpool(heads)
                if now != sent:
                    yield f"event: runs\ndata: {json.dumps(now)}\n\n"
                    if watched is not None and watched in now and (sent or {}).get(watched) != now[watched]:
                        yield f"event: run\ndata: {json.dumps({'run_id': watched, 'seq': now[watched]})}\n\n"
                    sent = now
                await asyncio.sleep(POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/runs", endpoint(get_runs)),
        Route("/api/runs/{run_id}", endpoint(get_run)),
        Route("/api/runs/{run_id}/timeline", endpoint(get_timeline)),
        Route("/api/runs/{run_id}/events", endpoint(get_events)),
        Route("/api/runs/{run_id}/state", endpoint(get_state)),
        Route("/api/runs/{run_id}/diff", endpoint(get_diff)),
        Route("/api/runs/{run_id}/episodes/{episode_id}", endpoint(get_episode)),
        Route("/api/runs/{run_id}/fork", endpoint(post_fork), methods=["POST"]),
        Route("/api/runs/{run_id}/pause", endpoint(post_pause), methods=["POST"]),
        Route("/api/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.hosts))])


def new_token() -> str:
    return secrets.token_urlsafe(32)
