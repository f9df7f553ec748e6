"""Connection hygiene of the HTTP server: read timeouts, a body rate floor, a connection cap in JSON.

The server runs in a thread on an ephemeral 127.0.0.1 port with a tiny numpy "model", so
these tests exercise only the connection handling. Every socket here goes to 127.0.0.1,
every loop is bounded in count and time, and the limits are small so that the tests are
short; no test measures speed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
from testutil import metric, png_bytes, serve_command, serving_in_thread, tiny_model

from interop.serving import ServeConfig, create_app
from interop.serving.client import Client

uvicorn = pytest.importorskip("uvicorn")

HEAD = b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"


# Small limits, so that every timeout fires within a second or two.
QUICK = ServeConfig(
    max_batch_size=4,
    max_wait_ms=1,
    max_connections=4,
    header_timeout_s=1.0,
    body_timeout_s=3.0,
    keep_alive_timeout_s=1.0,
    min_body_rate=200.0,
    body_rate_window_s=0.5,
)


@contextlib.contextmanager
def serving(config: ServeConfig = QUICK):
    """Our app on the tiny model under uvicorn with our connection guard, in a thread; yields ``(url, port)`` once ready."""
    with serving_in_thread(create_app(tiny_model(), config), ready_within_s=60) as url:
        yield url, int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(1)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection; fails unless it closes within ``limit_s``."""
    data, deadline = b"", time.monotonic() + limit_s
    while True:
        assert time.monotonic() < deadline, f"connection still open after {limit_s} s; got {data[:200]!r}"
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_error(raw: bytes, status: int, contains: str = "") -> dict[str, str]:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json", raw[:300]
    error = json.loads(body)["error"]
    assert error and "\n" not in error and contains in error, error
    return headers


def drip(sock: socket.socket, stop: threading.Event, every_s: float = 0.2, limit_s: float = 15.0) -> None:
    """Sends one byte every ``every_s`` until the server closes, ``stop`` is set or ``limit_s`` passes."""
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            sock.send(b"x")
        except OSError:
            return
        stop.wait(every_s)


def test_a_silent_connection_is_closed_after_the_header_timeout():
    with serving() as (url, port):
        sock = connect(port)
        start = time.monotonic()
        assert read_until_closed(sock) == b""  # nothing to answer: no request was started
        assert time.monotonic() - start < 8
        assert metric(url, "vitjax_serve_connections_closed_total", 'reason="header_timeout"') >= 1


def test_a_request_head_sent_slowly_gets_a_json_408():
    with serving() as (url, port):
        sock, stop = connect(port), threading.Event()
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dripper = threading.Thread(target=drip, args=(sock, stop))  # header bytes, never the blank line
        dripper.start()
        try:
            assert_json_error(read_until_closed(sock), 408, "request head")
        finally:
            stop.set()
            dripper.join(20)
            sock.close()


def test_a_stalled_or_slow_upload_gets_a_json_408_and_is_counted():
    with serving() as (url, port):
        stalled = connect(port)
        stalled.sendall(HEAD + b"Content-Length: 100000\r\n\r\n" + b"\x89PNG")  # then nothing
        slow, stop = connect(port), threading.Event()
        slow.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
        dripper = threading.Thread(target=drip, args=(slow, stop))  # 5 B/s < min_body_rate
        dripper.start()
        try:
            assert_json_error(read_until_closed(stalled), 408, "request body")
            assert_json_error(read_until_closed(slow), 408, "request body")
        finally:
            stop.set()
            dripper.join(20)
            stalled.close()
            slow.close()
        assert metric(url, "vitjax_serve_requests_total", 'code="408",endpoint="/classify"') == 2
        assert metric(url, "vitjax_serve_errors_total", 'kind="slow_body"') == 2
        assert metric(url, "vitjax_serve_requests_total", 'code="500",endpoint="/classify"') == 0


def test_an_upload_faster_than_the_floor_but_longer_than_the_body_timeout_gets_408():
    config = ServeConfig(**{**QUICK.__dict__, "min_body_rate": 10.0, "body_timeout_s": 1.5})
    with serving(config) as (url, port):
        sock, stop = connect(port), threading.Event()
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
        dripper = threading.Thread(target=drip, args=(sock, stop, 0.02))  # ~50 B/s: above the floor, never done
        dripper.start()
        try:
            assert_json_error(read_until_closed(sock), 408, "1.5 s")
        finally:
            stop.set()
            dripper.join(20)
            sock.close()
        assert metric(url, "vitjax_serve_errors_total", 'kind="body_timeout"') == 1


def test_an_idle_keep_alive_connection_is_closed():
    with serving() as (url, port):
        sock = connect(port)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw = read_until_closed(sock)  # the answer, then the close once idle for keep_alive_timeout_s
        assert parse(raw)[0] == 200 and b'"alive"' in raw


def test_silent_connections_beyond_the_limit_make_room_for_a_valid_client():
    with serving() as (url, port):
        silent = [connect(port) for _ in range(2 * QUICK.max_connections)]
        try:
            time.sleep(0.2)
            reply = Client(url, timeout=10).classify([png_bytes()])
            assert reply.status == 200, reply.text  # the longest-idle silent connections were closed for it
        finally:
            for sock in silent:
                sock.close()
        assert metric(url, "vitjax_serve_connections_closed_total", 'reason="evicted"') >= QUICK.max_connections


def test_the_connection_limit_is_a_json_503_with_retry_after_and_a_valid_client_gets_in_soon():
    with serving() as (url, port):
        stop, socks, drippers = threading.Event(), [], []
        for _ in range(QUICK.max_connections):  # every slot held by an upload in progress
            sock = connect(port)
            sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
            socks.append(sock)
            drippers.append(threading.Thread(target=drip, args=(sock, stop)))
        for t in drippers:
            t.start()
        try:
            time.sleep(0.1)
            extra = connect(port)
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            headers = assert_json_error(read_until_closed(extra), 503, "connections")
            assert int(headers["retry-after"]) >= 1 and headers["connection"] == "close"
            client, start, reply = Client(url, timeout=10), time.monotonic(), None
            for _ in range(10):  # the slow uploads are cut within a rate window; retry as told
                reply = client.classify([png_bytes()])
                if reply.status != 503:
                    break
                time.sleep(min(float(reply.headers["retry-after"]), 1.0))
            assert reply.status == 200, reply.text
            assert time.monotonic() - start < 8
        finally:
            stop.set()
            for t in drippers:
                t.join(20)
            for sock in socks:
                sock.close()
        assert metric(url, "vitjax_serve_errors_total", 'kind="too_many_connections"') >= 1


def test_malformed_http_gets_a_json_400():
    with serving() as (url, port):
        sock = connect(port)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert_json_error(read_until_closed(sock), 400, "HTTP")
        sock = connect(port)
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000
        )  # an unfinished head over h11's 16 KiB
        assert_json_error(read_until_closed(sock), 400, "HTTP")
        assert metric(url, "vitjax_serve_connections_closed_total", 'reason="malformed_http"') == 2


def test_a_client_gone_mid_upload_is_counted_as_a_disconnect_not_a_500():
    with serving() as (url, port):
        sock = connect(port)
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" * 100)
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 10
        while metric(url, "vitjax_serve_errors_total", 'kind="client_disconnected"') < 1:
            assert time.monotonic() < deadline, "disconnect never counted"
            time.sleep(0.05)
        assert metric(url, "vitjax_serve_requests_total", 'code="499",endpoint="/classify"') == 1
        assert metric(url, "vitjax_serve_requests_total", 'code="500",endpoint="/classify"') == 0


# --- the serve command itself, on the test-size model (fixtures from test_serving)

from test_serving import exported  # noqa: E402,F401  (a fixture: the exported test-size model)


def test_serve_command_outlasts_more_silent_and_slow_connections_than_its_limit(exported):
    """16 connections against ``--max-concurrency 8``: 8 silent, 8 dripping their body; a valid client gets in."""
    _, model_dir = exported
    flags = [
        "--max-concurrency",
        "8",
        "--header-timeout",
        "2",
        "--min-body-rate",
        "1000",
        "--body-rate-window",
        "1",
        "--log-level",
        "warning",
    ]
    with serve_command(model_dir, *flags) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        stop, socks, drippers = threading.Event(), [], []
        try:
            for i in range(16):
                sock = connect(port)
                socks.append(sock)
                if i % 2:
                    sock.sendall(HEAD + b"Content-Length: 1000000\r\n\r\n")
                    drippers.append(threading.Thread(target=drip, args=(sock, stop, 0.2, 20)))
                    drippers[-1].start()
            time.sleep(0.3)
            client, start, replies = Client(url, timeout=10), time.monotonic(), []
            for _ in range(20):
                replies.append(client.classify([png_bytes()]))
                if replies[-1].status != 503:
                    break
                assert (
                    replies[-1].json()["error"] and int(replies[-1].headers["retry-after"]) >= 1
                )  # JSON, with Retry-After
                time.sleep(0.5)
            assert replies[-1].status == 200, replies[-1].text
            assert time.monotonic() - start < 10
        finally:
            stop.set()
            for t in drippers:
                t.join(30)
            for sock in socks:
                sock.close()


def test_a_request_cut_by_the_graceful_timeout_gets_a_json_503(exported):
    import signal

    _, model_dir = exported
    flags = ["--max-batch-size", "16", "--max-wait-ms", "20000", "--graceful-timeout", "0.5", "--log-level", "critical"]
    with serve_command(model_dir, *flags) as (proc, url):
        result = []
        waiting = threading.Thread(target=lambda: result.append(Client(url, timeout=30).classify([png_bytes()])))
        waiting.start()  # waits in the batcher for 15 more images
        deadline = time.monotonic() + 10
        while metric(url, "vitjax_serve_in_flight_requests") < 2:  # it, and this /metrics
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        waiting.join(20)
        (reply,) = result
        assert reply.status == 503 and reply.headers["content-type"] == "application/json", reply.text
        assert "shut down" in reply.json()["error"]
        assert proc.wait(30) == 0
