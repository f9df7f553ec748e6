"""Connection hygiene under uvicorn: read timeouts, a body rate floor and a connection cap, refused in JSON.

uvicorn times out only idle kept-alive connections. A client that connects and sends
nothing, or sends its request head or body a byte at a time, keeps its connection as long
as it likes, and uvicorn's ``limit_concurrency`` then answers everyone else with a
plain-text 503. :func:`guarded_protocol` is uvicorn's h11 protocol with one timer per
connection that follows the phase the client is in (h11's ``their_state``):

==========  ==========================================================================
head        ``IDLE``, from the connection's start or from the first byte of a kept-alive
            connection's next request: the whole head within ``header_timeout_s``, else
            the connection is closed (quietly when nothing came; a JSON 408 otherwise)
body        ``SEND_BODY``: the whole body within ``body_timeout_s`` of its head, and at
            least ``min_body_rate`` bytes per second over every ``body_rate_window_s``
            (time in which the server itself is not reading does not count), else 408
app         ``DONE``: the request is in; the request timeout (504) applies, not these
idle        after a response: uvicorn's keep-alive timer, ``keep_alive_timeout_s``
==========  ==========================================================================

At most ``max_connections`` connections are admitted. When one more arrives, the
connection idle longest (waiting for a request head, or kept alive) is closed to make
room; when none is idle, the newcomer is answered with the app's JSON 503 and
``Retry-After`` once its head is in. Malformed HTTP gets a JSON 400 instead of uvicorn's
plain text. Each close is counted in ``vitjax_serve_connections_closed_total{reason}``; a
request cut in its body phase is also counted by the app as code 408 with the error kind
``body_timeout`` or ``slow_body``.
"""

from __future__ import annotations

import http
import json
import logging
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from interop.serving.app import CUT_BY_GUARD
from interop.serving.config import ServeConfig
from interop.serving.metrics import ServerMetrics

log = logging.getLogger("interop.serving")

LINGER_S = 2.0  # after an early answer, how long the rest of the client's upload is read and dropped


def error_bytes(status: int, reason: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response ``{"error": reason}`` that closes the connection."""
    body = json.dumps({"error": " ".join(reason.split())}).encode()
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(config: ServeConfig, metrics: ServerMetrics, refuse_app: Any) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``config``'s connection limits (see the module docstring).

    ``refuse_app`` is the ASGI app that answers a connection over ``max_connections``;
    ``metrics`` gets the open-connection gauge and the closes by reason.
    """
    window, floor = config.body_rate_window_s, config.min_body_rate

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # uvicorn's plain-text 503 off: connection_made applies ours
            self.admitted = True  # False: over the limit (answered with refuse_app) or being closed
            self._timer = None
            self._head_since: float | None = None  # when the request head now awaited began
            self._body_since: float | None = None  # when the body now being read began
            self._window_since, self._window_bytes = 0.0, 0
            self._idle_since = time.monotonic()
            self._discarding = False

        # --- uvicorn's protocol interface

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            metrics.open_connections.inc()
            self._head_since = self._idle_since = time.monotonic()
            self._arm(config.header_timeout_s)
            self._make_room()

        def connection_lost(self, exc) -> None:
            self._disarm()
            metrics.open_connections.dec()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            if self._body_since is not None:
                self._window_bytes += len(data)
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            self._head_since = self._body_since = None
            self._idle_since = time.monotonic()
            self._disarm()
            super().on_response_complete()
            self._follow()  # a pipelined request may already be waiting

        def send_400_response(self, msg: str) -> None:
            metrics.connections_closed.labels("malformed_http").inc()
            self._answer_and_close(
                error_bytes(400, "malformed HTTP request (not HTTP/1.1, or a bad request line or header)")
            )

        # --- the phases

        def _follow(self) -> None:
            """Moves the watch to the phase h11 says the client is in."""
            if self.transport is None or self.transport.is_closing() or self._discarding:
                return self._disarm()
            state, now = self.conn.their_state, time.monotonic()
            if state is h11.IDLE:
                self._body_since = None
                if self._head_since is None and self.conn.trailing_data[0]:  # a kept-alive connection's next head began
                    self._head_since = now
                    self._arm(config.header_timeout_s)
            elif state is h11.SEND_BODY:
                self._head_since = None
                if self._body_since is None:
                    self._body_since = self._window_since = now
                    self._window_bytes = 0
                    self._arm(min(window, config.body_timeout_s))
            else:  # DONE (the app's turn), or closing
                self._head_since = self._body_since = None
                self._disarm()

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing() or self._discarding:
                return
            state, now = self.conn.their_state, time.monotonic()
            if state is h11.IDLE and self._head_since is not None:
                waited = now - self._head_since
                if waited < config.header_timeout_s:
                    return self._arm(config.header_timeout_s - waited)
                if not self.conn.trailing_data[0]:
                    return self._close_quietly("header_timeout")
                return self._cut("header_timeout", f"request head not received within {config.header_timeout_s:g} s")
            if state is h11.SEND_BODY and self._body_since is not None:
                if now - self._body_since >= config.body_timeout_s:
                    return self._cut("body_timeout", f"request body not received within {config.body_timeout_s:g} s")
                if self._server_holds_back():
                    self._window_since, self._window_bytes = now, 0
                elif now - self._window_since >= window:
                    rate = self._window_bytes / (now - self._window_since)
                    if rate < floor:
                        return self._cut(
                            "slow_body", f"request body arriving at {rate:.0f} B/s, under the minimum of {floor:g} B/s"
                        )
                    self._window_since, self._window_bytes = now, 0
                self._arm(min(self._window_since + window, self._body_since + config.body_timeout_s) - now)

        def _server_holds_back(self) -> bool:
            """True while the client cannot send because of us: reading paused, or 100-continue not yet sent."""
            return self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)

        def _idle(self) -> bool:
            """Waiting for a request head (or kept alive): closing it loses no request."""
            return (
                self.admitted
                and self.conn.their_state is h11.IDLE
                and (self.cycle is None or self.cycle.response_complete)
            )

        def _make_room(self) -> None:
            admitted = [c for c in self.connections if getattr(c, "admitted", False)]
            if len(admitted) <= config.max_connections:
                return
            idle = [c for c in admitted if c is not self and c._idle()]
            if idle:
                min(idle, key=lambda c: c._idle_since)._close_quietly("evicted")
            elif sum(1 for c in self.connections if not getattr(c, "admitted", True)) > config.max_connections:
                self._close_quietly("refused")  # refusals themselves are bounded
            else:
                self.admitted = False
                self.app = refuse_app  # answers its request, when the head is in, with a JSON 503

        # --- closing

        def _close_quietly(self, reason: str) -> None:
            metrics.connections_closed.labels(reason).inc()
            self.admitted = False
            self._disarm()
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

        def _cut(self, kind: str, reason: str) -> None:
            """Answers 408 (unless a response has begun) and closes; a request in its body phase learns why."""
            metrics.connections_closed.labels(kind).inc()
            log.info("%s:%s - %s", *(self.client or ("?", 0)), reason)
            cycle = self.cycle if self.conn.their_state is h11.SEND_BODY else None
            if cycle is not None:
                cycle.scope[CUT_BY_GUARD] = kind  # type: ignore[literal-required]
                if cycle.response_started:
                    return self.transport.close()
            self._answer_and_close(error_bytes(408, reason))

        def _answer_and_close(self, response: bytes) -> None:
            """Writes ``response`` and half-closes; what the client still sends is dropped for LINGER_S, then closed.

            Closing at once would reset a client that is still uploading, often before it
            has read the answer. The request being read, if any, ends as a disconnect.
            """
            self.admitted, self._discarding = False, True
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)

        def _arm(self, delay: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(max(delay, 0.0), self._check)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    return GuardedH11Protocol


def uvicorn_config(app, **kwargs) -> uvicorn.Config:
    """``uvicorn.Config`` for our app with its connection guard; ``kwargs`` (host, port, log_level, ...) pass through."""
    state = app.state.serving
    config = state.config
    options = dict(
        http=guarded_protocol(config, state.metrics, state.refuse_app),
        limit_concurrency=None,
        timeout_keep_alive=config.keep_alive_timeout_s,
        lifespan="on",
        access_log=False,
        server_header=False,
    )
    return uvicorn.Config(app, **{**options, **kwargs})
