"""Episode throughput under concurrency (issue I): episodes/s against a slow model server.

    python bench/episode_throughput.py [--rounds 32 | --episodes N] [--latency 0.2] [--concurrency 1 8 32]
                                       [--sandbox process bwrap] [--repeats 1] [--cold-server]
                                       [--fsync-delay-ms 0]

A loopback vLLM-compatible server, in a process of its own, answers every completion after
a fixed `--latency` (many at once: one thread per connection). For each sandbox and concurrency, a fresh sia
home runs one generation of a task with `--episodes` dev samples whose reference
harness makes exactly one model call, through the real pieces: the `Runtime` with the
handlers `sia run` wires (built-in Meta, the episode handler, the sandbox, the per-episode
gateway, `RemoteBackend` and its keep-alive HTTP client), an SQLite store, the effect cache off.

The clock runs from the commit of the episodes' `EffectRequested` batch to the commit of
the last episode's outcome. Under bwrap, episodes fork from their harness's warm sandbox
(`sia.harness.forkserver`), which the Meta Agent's smoke run of that harness has started
before the episodes, as in every `sia run`; `--cold-server` closes it first, so that the
clock also counts starting it. With every episode waiting `latency` on the model and
nothing else, `concurrency` of them at a time finish in episodes × latency ÷ concurrency
(the ideal); the ratio is ideal ÷ measured. Target: ≥ 0.8 at concurrency 32.

Every episode also costs CPU (its sandboxed child, the gateway, the SDK call and the
commits): the cores finish at most cores ÷ CPU per episode episodes a second, so in
steady state the ratio is at most cores × latency ÷ (concurrency × CPU per episode). The
bench reports the CPU the whole process tree spent per episode and that ceiling, and the CPU
the whole machine spent per episode in the same window (kernel threads and the model server
included).

An episode holds one of the `concurrency` slots for its wall time (its usage's `wall_s`: from
the handler's start to its result, fork, sandbox, gateway and trajectory included), so the
ratio is at most latency ÷ mean episode wall; the bench reports that mean (`ep. wall ms`).
What it holds beyond the latency is the episode's own overhead, most of it waiting for a core.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sia.core.events.envelope import StoredEvent
from sia.core.events.types import RunConfig
from sia.core.reducers.state import LoopState
from sia.harness import forkserver
from sia.runtime.loop import Runtime
from sia.runtime.settings import Settings
from sia.runtime.wiring import handlers_for
from sia.store.sqlite import SqliteEventStore
from sia.tasks.loader import load_task
from sia.testing.loopback import JSON, LoopbackServer, ProtocolError, RecordedRequest, Route

SERVED_NAME = "bench-model"
CORES = os.cpu_count() or 1
LISTEN_BACKLOG = 1024
ANSWER = "yes"
HARNESS = ('"""One model call per episode."""\n\n\n'
           "def solve(sample, model):\n"
           "    return model.complete(sample['question'], max_tokens=4, temperature=0.0)\n")


class FixedLatencyServer(LoopbackServer):
    """vLLM's `/v1/completions` as `RemoteBackend` reads it, every answer after `latency_s`.

    Each prompt is answered `ANSWER`, ended by EOS (which vLLM keeps as the last token id);
    token ids are the prompt's bytes, since nothing here is trained.
    """

    EOS = 0

    def __init__(self, latency_s: float) -> None:
        super().__init__()
        self.latency_s = latency_s
        self.responder = lambda request: None  # unused: every answer is ANSWER

    def start(self) -> FixedLatencyServer:
        """Serve with a listen queue as deep as a real server's (uvicorn: 2048): socketserver's
        5 drops the SYNs of the SDK's many first connections, which then wait out a 1 s retry."""
        super().start()
        assert self._httpd is not None
        self._httpd.socket.listen(LISTEN_BACKLOG)
        return self

    def __enter__(self) -> FixedLatencyServer:
        return self.start()

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/v1/completions"): self._completions,
                ("GET", "/v1/models"): lambda request: (200, {}, {"object": "list", "data": [
                    {"id": SERVED_NAME, "object": "model", "owned_by": "bench"}]}),
                ("GET", "/version"): lambda request: (200, {}, {"version": "0.12.0"})}

    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]:
        return {}, {"error": {"message": message, "type": error_type or "BadRequestError",
                              "param": None, "code": status}}

    def _completions(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        body = request.body if isinstance(request.body, dict) else {}
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
            raise ProtocolError(400, "prompt must be a string or a list of strings")
        n = int(body.get("n") or 1)
        time.sleep(self.latency_s)
        answer_ids = [*ANSWER.encode(), self.EOS]
        choices = [{"index": index, "text": ANSWER, "finish_reason": "stop", "stop_reason": None,
                    "logprobs": {"tokens": [], "token_logprobs": [0.0] * len(answer_ids),
                                 "top_logprobs": [], "text_offset": []},
                    "prompt_token_ids": list(prompts[index // n].encode()), "token_ids": answer_ids}
                   for index in range(len(prompts) * n)]
        return 200, {}, {"id": "cmpl-bench", "object": "text_completion", "created": 0,
                         "model": SERVED_NAME, "choices": choices,
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


@dataclass(frozen=True)
class Served:
    """Where the model is served, and how slowly."""

    base_url: str
    latency_s: float


def _serve(latency_s: float, connection: Connection) -> None:
    with FixedLatencyServer(latency_s) as server:
        connection.send(server.base_url)
        connection.recv()  # until the bench says it is done (or its end of the pipe closes)


@contextmanager
def served_elsewhere(latency_s: float) -> Iterator[Served]:
    """The model server in a process of its own, as a real one is: its HTTP handling then
    shares neither sia's interpreter lock nor its CPU accounting (`cpu_s` counts only
    children that have ended)."""
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(latency_s, theirs), daemon=True)
    process.start()
    try:
        yield Served(ours.recv(), latency_s)
    finally:
        ours.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def write_task(folder: Path, episodes: int) -> Path:
    """A task of `episodes` dev samples whose reference harness makes one model call."""
    def rows(prefix: str, count: int) -> list[dict[str, Any]]:
        return [{"id": f"{prefix}-{i:04d}", "question": f"Is {i} a number?"} for i in range(count)]

    splits = {"dev": rows("dev", episodes), "train": rows("train", 2), "test": rows("test", 2)}
    (folder / "public").mkdir(parents=True, exist_ok=True)
    (folder / "private").mkdir(exist_ok=True)
    (folder / "task.toml").write_text(
        'name = "throughput"\ndescription = "Answer yes: a bench task whose harness makes one '
        f'model call."\n\n[reward]\nkind = "binary"\n\n[splits]\ntrain = 2\ndev = {episodes}\n'
        "test = 2\n")
    for split, samples in splits.items():
        path = folder / ("private/test.jsonl" if split == "test" else f"public/{split}.jsonl")
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    (folder / "private/labels.jsonl").write_text("".join(
        json.dumps({"id": s["id"], "label": ANSWER}) + "\n" for s in sum(splits.values(), [])))
    (folder / "evaluator.py").write_text(
        "def reward(sample, prediction, label):\n"
        "    return float(prediction.strip().lower() == label)\n")
    (folder / "reference_harness.py").write_text(HARNESS)
    return folder


def fork_exit_ms(children: int = 200) -> float:
    """Wall time of forking this process and reaping the child, which exits at once: what the
    machine charges for a process, before any namespace or mount (a fork-server episode pays
    it once, on a smaller interpreter). Virtual machines differ here by several times."""
    started = time.perf_counter()
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return round((time.perf_counter() - started) / children * 1000, 2)


def interpreter_speed_s(iterations: int = 3_000_000) -> float:
    """Seconds this interpreter takes for a fixed loop of arithmetic: a virtual machine's
    CPU is shared with its host's other guests and runs from one to two times slower from
    one minute to the next, so the bench times it before and after its runs."""
    started, total = time.perf_counter(), 0
    for i in range(iterations):
        total += i * i
    return round(time.perf_counter() - started, 3)


def slow_fsyncs(delay_s: float) -> None:
    """Every `os.fsync` of this process (the event store's blobs and folders) waits `delay_s`
    first: this machine's disk takes 5-6 ms an fsync in its slow minutes, and a bench that
    waits for such minutes cannot compare two versions in the same ones."""
    fsync = os.fsync

    def slow(fd: int) -> None:
        time.sleep(delay_s)
        fsync(fd)

    os.fsync = slow


def cpu_s() -> tuple[float, float]:
    """CPU seconds so far of this process (sia: runtime, gateway, SDK, store) and of its reaped
    children (the sandboxes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent so far (every process and kernel thread, the
    model server's too; not idle, I/O wait or time the hypervisor took): what `cpu_s` cannot
    see, such as the kernel's deferred work of tearing down an episode's namespaces."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class EpisodeClock:
    """A runtime observer: wall and CPU time from the commit of the episodes' requests to
    the commit of the last episode's outcome."""

    def __init__(self) -> None:
        self.requested: set[str] = set()
        self.settled: set[str] = set()
        self.failures: list[str] = []
        self.walls: list[float] = []
        self.started: tuple[float, tuple[float, float], float] | None = None
        self.ended: tuple[float, tuple[float, float], float] | None = None

    def __call__(self, state: LoopState, stored: list[StoredEvent]) -> None:
        for event in stored:
            if event.type not in ("EffectRequested", "EffectCompleted", "EffectFailed"):
                continue
            payload = json.loads(event.payload)
            if payload.get("kind") != "episode":
                continue
            if event.type == "EffectRequested":
                self.started = self.started or (time.perf_counter(), cpu_s(), machine_busy_s())
                self.requested.add(payload["effect_id"])
            elif payload["effect_id"] in self.requested:
                self.settled.add(payload["effect_id"])
                if len(self.settled) == len(self.requested):  # only then: 70 threads' rusage is no free read
                    self.ended = (time.perf_counter(), cpu_s(), machine_busy_s())
                self.walls.append(float((payload.get("usage") or {}).get("wall_s", 0.0)))
                outcome = payload.get("result") or {}
                if event.type == "EffectFailed" or outcome.get("status") != "ok":
                    self.failures.append(str(payload.get("error") or outcome.get("error")))


def measure(root: Path, task_dir: Path, server: Served, sandbox: str,
            concurrency: int, episodes: int, cold_server: bool = False) -> dict[str, Any]:
    """One generation of the task at `concurrency`, in a fresh home; its episode throughput."""
    home = Path(tempfile.mkdtemp(prefix=f"{sandbox}-{concurrency}-", dir=root))
    task = load_task(str(task_dir), cache=home / "tasks")
    config = RunConfig(task=task.name, mode="H", max_generations=1, target=f"vllm:{SERVED_NAME}",
                       sandbox=sandbox)  # type: ignore[arg-type]
    settings = Settings(providers={"vllm": {"base_url": server.base_url + "/v1", "api_key_env": None}})
    clock = EpisodeClock()
    store = SqliteEventStore(home / "sia.db", blob_root=home / "blobs")
    try:
        registry = handlers_for(config, task.identity(), home=home, settings=settings)
        runtime = Runtime(store, registry, concurrency=concurrency, cache="off", home=home,
                          observer=clock)
        gc.freeze()  # as `sia run` does once it is wired
        run_id = runtime.create(config, task.identity())
        runtime.drive(run_id, max_batches=1)  # Meta, whose smoke run starts the fork server
        if cold_server:
            forkserver.SERVERS.close()  # so that the episodes' clock includes starting one
        runtime.drive(run_id, max_batches=1)  # the episodes
        # A fork server's episodes are its children: their CPU reaches this process's
        # RUSAGE_CHILDREN only once the server (bwrap's child) has reaped them and ended.
        forkserver.SERVERS.close()
        spent = cpu_s()
    finally:
        store.close()
    if clock.started is None or clock.ended is None or len(clock.settled) != episodes or clock.failures:
        raise SystemExit(f"{sandbox} x{concurrency}: {len(clock.settled)} of {episodes} episodes "
                         f"settled, {len(clock.failures)} not ok: {clock.failures[:3]}")
    seconds = clock.ended[0] - clock.started[0]
    own, children = clock.ended[1][0] - clock.started[1][0], spent[1] - clock.started[1][1]
    cpu = own + children
    ideal = episodes * server.latency_s / concurrency
    cpu_per_episode = cpu / episodes
    walls = sorted(clock.walls)
    return {"sandbox": sandbox, "concurrency": concurrency, "episodes": episodes,
            "seconds": round(seconds, 3), "episodes_per_s": round(episodes / seconds, 2),
            "ideal_seconds": round(ideal, 3), "ideal_episodes_per_s": round(episodes / ideal, 2),
            "ratio": round(ideal / seconds, 3), "cpu_ms_per_episode": round(1000 * cpu_per_episode, 1),
            "sia_cpu_ms_per_episode": round(1000 * own / episodes, 1),
            "machine_cpu_ms_per_episode": round(1000 * (clock.ended[2] - clock.started[2]) / episodes, 1),
            "cpu_ceiling": round(min(1.0, CORES * server.latency_s / (concurrency * cpu_per_episode)), 3),
            "episode_wall_ms": round(1000 * sum(walls) / len(walls), 1),
            "episode_wall_p90_ms": round(1000 * walls[int(0.9 * (len(walls) - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=32,
                        help="episodes per slot: each cell runs rounds × concurrency episodes, so "
                             "its ideal time is rounds × latency whatever the concurrency (a run of "
                             "only 2 rounds measures a burst's start more than a steady rate)")
    parser.add_argument("--episodes", type=int, help="the same count in every cell instead")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per completion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--sandbox", nargs="+", default=["process", "bwrap"],
                        choices=["process", "bwrap"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the median is kept (of two, the better)")
    parser.add_argument("--cold-server", action="store_true",
                        help="close the harness's fork server before the episodes (default: warm, as in a run)")
    parser.add_argument("--fsync-delay-ms", type=float, default=0.0,
                        help="make every fsync of sia's process this much slower: a slow disk, on purpose")
    args = parser.parse_args()
    if args.fsync_delay_ms > 0:
        slow_fsyncs(args.fsync_delay_ms / 1000)
    os.environ.pop("OPENAI_API_KEY", None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sia-bench-throughput-") as tmp, \
            served_elsewhere(args.latency) as server:
        root = Path(tmp)
        counts = {c: args.episodes or args.rounds * c for c in args.concurrency}
        tasks = {n: write_task(root / f"task-{n}", n) for n in set(counts.values())}
        load_before = round(os.getloadavg()[0], 2)
        forking, speed_before = fork_exit_ms(), interpreter_speed_s()
        print(f"{args.episodes or f'{args.rounds} rounds of'} episodes, {args.latency * 1000:g} ms per model call, "
              f"{CORES} cores, load {load_before:.2f}, fork and exit of this process {forking} ms, "
              f"interpreter loop {speed_before} s")
        print(f"{'sandbox':<9}{'conc.':>6}{'episodes':>9}{'seconds':>9}{'ep/s':>8}{'ideal ep/s':>12}{'ratio':>8}"
              f"{'CPU ms/ep':>11}{'of it sia':>11}{'machine':>9}{'CPU ceiling':>13}{'ep. wall ms':>13}")
        for sandbox in args.sandbox:
            for concurrency in args.concurrency:
                episodes = counts[concurrency]
                runs = [measure(root, tasks[episodes], server, sandbox, concurrency, episodes,
                                args.cold_server) for _ in range(args.repeats)]
                row = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
                row["ratios"] = [r["ratio"] for r in runs]
                rows.append(row)
                print(f"{sandbox:<9}{concurrency:>6}{episodes:>9}{row['seconds']:>9.2f}{row['episodes_per_s']:>8.1f}"
                      f"{row['ideal_episodes_per_s']:>12.1f}{row['ratio']:>8.2f}"
                      f"{row['cpu_ms_per_episode']:>11.1f}{row['sia_cpu_ms_per_episode']:>11.1f}"
                      f"{row['machine_cpu_ms_per_episode']:>9.1f}"
                      f"{row['cpu_ceiling']:>13.2f}{row['episode_wall_ms']:>13.1f}", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result = {"episodes": args.episodes, "rounds": None if args.episodes else args.rounds, "latency_s": args.latency, "cores": CORES,
              "fsync_delay_ms": args.fsync_delay_ms,
              "fork_server": "cold" if args.cold_server else "warm",
              "load_before": load_before, "fork_exit_ms": forking, "load_after": round(os.getloadavg()[0], 2),
              "interpreter_loop_s": [speed_before, interpreter_speed_s()], "rows": rows}
    name = (f"episode_throughput_{round(args.latency * 1000)}ms_"
            f"{f'{args.episodes}ep' if args.episodes else f'{args.rounds}rounds'}"
            f"{'_cold' if args.cold_server else ''}"
            f"{f'_fsync{args.fsync_delay_ms:g}ms' if args.fsync_delay_ms else ''}.json")
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"wrote bench/results/{name}")


if __name__ == "__main__":
    main()
