"""The target's JSON client (`sia.target.http`) against a real loopback server: keep-alive,
the SDK's retries (connection failures, 408/409/429/5xx, Retry-After), clear failures."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from sia.target.http import JsonClient, Unreachable, error_message
from sia.testing.loopback import JSON, Fault, LoopbackServer, RecordedRequest, Route


class EchoServer(LoopbackServer):
    """POST /v1/echo answers the body it got, and which connection it came on."""

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/v1/echo"): self._echo}

    def error_body(self, status: int, message: str, error_type: str | None) -> tuple[dict[str, str], JSON]:
        return {}, {"error": {"message": message, "type": error_type or "error", "code": status}}

    def _echo(self, request: RecordedRequest) -> tuple[int, dict[str, str], JSON]:
        return 200, {}, {"got": request.body, "auth": request.headers.get("authorization")}


@pytest.fixture
def server() -> Iterator[EchoServer]:
    with EchoServer() as running:
        yield running


def client(server: EchoServer, **options: object) -> JsonClient:
    return JsonClient(server.base_url + "/v1", api_key=options.pop("api_key", None),  # type: ignore[arg-type]
                      timeout=5, backoff_s=0.01, **options)  # type: ignore[arg-type]


def test_a_call_sends_json_and_reads_json_on_one_kept_alive_connection(server: EchoServer) -> None:
    http = client(server, api_key="k-123")
    answers = [http.post("/echo", {"i": i}) for i in range(5)]
    assert answers == [(200, {"got": {"i": i}, "auth": "Bearer k-123"}) for i in range(5)]
    assert len(http._idle) == 1  # one connection served all five


def test_server_errors_and_dropped_connections_are_retried_twice(server: EchoServer) -> None:
    http = client(server)
    server.fail_next(Fault(status=503), Fault(disconnect=True))
    assert http.post("/echo", {"x": 1}) == (200, {"got": {"x": 1}, "auth": None})
    server.fail_next(Fault(status=500), Fault(status=502), Fault(status=500, message="still down"))
    status, body = http.post("/echo", {"x": 2})
    assert status == 500 and error_message(body) == "still down"


def test_a_client_error_is_not_retried(server: EchoServer) -> None:
    http = client(server)
    server.fail_next(Fault(status=400, message="bad prompt"), Fault(status=500))
    status, body = http.post("/echo", {})
    assert (status, error_message(body), server.pending_faults) == (400, "bad prompt", 1)


def test_retry_after_is_honoured_and_capped(server: EchoServer) -> None:
    http = client(server)
    server.fail_next(Fault(status=429, retry_after=0.3))
    started = time.perf_counter()
    assert http.post("/echo", {})[0] == 200
    assert 0.3 <= time.perf_counter() - started < 2.0


def test_a_connection_the_server_closed_while_idle_is_replaced_at_once(server: EchoServer) -> None:
    http = client(server, max_retries=0)
    assert http.post("/echo", {"n": 1})[0] == 200
    http._idle[0].sock.shutdown(socket.SHUT_RDWR)  # as a server's keep-alive timeout would
    assert http.post("/echo", {"n": 2}) == (200, {"got": {"n": 2}, "auth": None})


def test_an_unreachable_server_is_a_clear_error_after_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = JsonClient(f"http://127.0.0.1:{port}/v1", api_key=None, timeout=2, backoff_s=0.01)
    with pytest.raises(Unreachable, match="ConnectionRefusedError"):
        http.post("/echo", {})


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        JsonClient("ftp://host/v1", api_key=None, timeout=1)
