"""A real HTTP server on 127.0.0.1 (ephemeral port) that serves files and misbehaves on request.

Used by both test trees for the pretrained-weights downloads. Faults, set per server:

* ``drop_once_at``: the first full-body response for a path stops after that many bytes and
  the connection is closed (Content-Length still announces the whole file);
* ``range_support=False``: ``Range`` headers are ignored (always 200 with the whole file);
* ``seconds_per_body``: bodies are sent in slices spread over that long (for races);
* ``corrupt``: ``{path: body}`` served instead of the file, with a 200.

Every request is logged as ``(path, range header or None, status)``.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator


class WeightServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.drop_once_at: int | None = None
        self.range_support = True
        self.seconds_per_body = 0.0
        self.corrupt: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None, int]] = []
        self._lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.log.append((path, range_header, status))

    def gets(self, path: str) -> list[tuple[str | None, int]]:
        return [(r, s) for p, r, s in self.log if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WeightServer

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path
        range_header = self.headers.get("Range")
        body = self.server.corrupt.get(path, self.server.files.get(path))
        if body is None:
            self.server.record(path, range_header, 404)
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and self.server.range_support and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0])
        if start >= len(body) and start:
            self.server.record(path, range_header, 416)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 206 if start else 200
        self.server.record(path, range_header, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Accept-Ranges", "bytes" if self.server.range_support else "none")
        self.end_headers()
        payload = body[start:]
        if status == 200 and self.server.drop_once_at is not None:
            cut, self.server.drop_once_at = self.server.drop_once_at, None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        slices = 20 if self.server.seconds_per_body else 1
        step = -(-len(payload) // slices)
        for i in range(0, len(payload), step):
            self.wfile.write(payload[i : i + step])
            self.wfile.flush()
            if self.server.seconds_per_body:
                time.sleep(self.server.seconds_per_body / slices)


@contextlib.contextmanager
def serving(files: dict[str, bytes]) -> Iterator[WeightServer]:
    """A started :class:`WeightServer`; shut down and its port closed on exit."""
    server = WeightServer(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
