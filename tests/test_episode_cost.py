"""What an episode costs besides its model calls, which bounds how many run at once.

Concurrent episodes wait on the model together, but each spends CPU of its own: the
supervisor's wait and the child's start-up. Two costs measured in
`bench/episode_throughput.py` are kept out: the supervisor spinning on a result channel
the runner has closed while its interpreter shuts down, and the runner importing
http.client (with the email package) for its one call to the gateway.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sia.harness.backends import ScriptedBackend
from sia.harness.bwrap import SandboxUnavailable, require_bwrap
from sia.harness.gateway import ModelGateway
from sia.harness.runner import ModelError, post_unix
from sia.harness.sandbox import ISOLATIONS, Isolation, _supervise, run_episode

LINGER_S = 0.5


def test_a_child_that_closed_its_result_channel_is_awaited_without_spinning() -> None:
    read_end, write_end = os.pipe()
    script = (f"import os, time; os.write({write_end}, b'done'); os.close({write_end}); "
              f"time.sleep({LINGER_S})")
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", script], pass_fds=(write_end,),
                             start_new_session=True)
    os.close(write_end)
    try:
        wall, cpu = time.perf_counter(), time.thread_time()
        ended = _supervise(child, read_end, time.perf_counter() + 30)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        os.close(read_end)
    assert (ended.reported, ended.code, ended.timed_out) == (b"done", 0, False)
    assert wall >= LINGER_S * 0.9
    assert cpu < LINGER_S * 0.2, f"the supervisor spent {cpu:.3f} s of CPU waiting {wall:.3f} s"


HEAVY_MODULES = (
    "import sys\n\n\n"
    "def solve(sample, model):\n"
    "    answer = model.complete(sample['question'], max_tokens=2)\n"
    "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('http', 'email', 'ssl'))\n"
    "    return answer + ' ' + ','.join(heavy)\n")
"""A harness that reports which of http.client's heavy packages its process has loaded."""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_runner_calls_the_gateway_without_loading_http_client(isolation: Isolation) -> None:
    if isolation == "bwrap":
        try:
            require_bwrap()
        except SandboxUnavailable as exc:
            pytest.skip(str(exc))
    with ModelGateway(ScriptedBackend(replies={"q": "fruit"})) as gateway:
        outcome = run_episode(HEAVY_MODULES, {"id": "s", "question": "q"},
                              model_socket=gateway.open_episode("light"), isolation=isolation)
        (call,) = gateway.close_episode("light")
    assert (outcome.status, outcome.answer, call.status) == ("ok", "fruit ", 200)


def test_a_gateway_that_hangs_up_without_answering_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        server = threading.Thread(target=hang_up)
        server.start()
        with pytest.raises(ModelError, match="without an HTTP answer"):
            post_unix(str(path), "/v1/completions", b"{}", timeout=10)
        server.join()
