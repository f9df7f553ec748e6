"""A small standard-library client for the server (tests, the load benchmark, scripts).

One :class:`Client` holds one keep-alive connection; use one per thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


def multipart_body(images: Sequence[bytes], field: str = "file") -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data upload of ``images``."""
    boundary = uuid.uuid4().hex
    parts = []
    for i, data in enumerate(images):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="image{i}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def json_body(images: Sequence[bytes]) -> tuple[bytes, str]:
    return json.dumps({"images": [base64.b64encode(d).decode() for d in images]}).encode(), "application/json"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class Client:
    """``Client("http://127.0.0.1:8080").classify([jpeg_bytes])``."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):  # a kept-alive connection the server has closed meanwhile: reconnect once
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                reply = self._conn.getresponse()
                data = reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt or not reused:
                    raise
                continue
            if reply.getheader("connection", "").lower() == "close":
                self.close()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
        raise AssertionError("unreachable")

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def classify(self, images: Sequence[bytes], *, encoding: str = "multipart", top_k: int | None = None) -> Response:
        """POST /classify with ``images`` sent as ``multipart``, ``json`` (base64) or ``raw`` (one image)."""
        path = "/classify" + (f"?top_k={top_k}" if top_k is not None else "")
        if encoding == "raw":
            (data,) = images
            return self.request("POST", path, data, "application/octet-stream")
        body, content_type = multipart_body(images) if encoding == "multipart" else json_body(images)
        return self.request("POST", path, body, content_type)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
