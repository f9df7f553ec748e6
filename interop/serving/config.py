"""The server's limits and batching knobs, with defaults safe for a service."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Everything the app enforces; the CLI fills it from its flags.

    ``max_batch_size`` / ``max_wait_ms``: a batch runs as soon as it holds
    ``max_batch_size`` images or its first image has waited ``max_wait_ms`` (Triton's
    ``max_queue_delay``). ``decode_wait_ms``: a batch not full after ``max_wait_ms`` waits up
    to this much longer for images that arrived and are being decoded at that moment (only
    while some are; 0 turns it off). ``max_queue_images``: images waiting for a batch beyond which
    a request is refused with 503. ``request_timeout_s``: a request whose results are
    not ready by then gets 504. ``max_body_bytes``: larger bodies get 413.
    ``max_pixels``: a decoded image may hold at most this many pixels, and so may the
    image after the eval transform's resize (PIL's decompression-bomb limit is set to it).

    Connection limits (enforced by :mod:`~interop.serving.connections` under uvicorn):
    ``max_connections`` open connections; beyond that the longest-idle connection that
    has not sent a whole request head is closed to make room, and when none is idle the
    newcomer gets a JSON 503 with ``Retry-After``. ``header_timeout_s``: a request head
    must arrive within this (from the connection's start, or from the first byte of a
    kept-alive connection's next request). ``body_timeout_s``: the whole body must arrive
    within this after its head. ``min_body_rate``: bytes per second a body must keep up,
    measured over every ``body_rate_window_s`` (time the server itself is not reading does
    not count). ``keep_alive_timeout_s``: an idle kept-alive connection is closed after this.
    """

    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    decode_wait_ms: float = 50.0
    max_queue_images: int = 256
    request_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_images_per_request: int = 32
    max_pixels: int = 40_000_000
    default_top_k: int = 5
    decode_threads: int = 2
    max_connections: int = 128
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0
    min_body_rate: float = 1024.0
    body_rate_window_s: float = 5.0
    grpc_address: str | None = None  # "host:port" for the KServe v2 gRPC service (port 0: a free one); None: off

    def __post_init__(self) -> None:
        for field in (
            "max_batch_size",
            "max_queue_images",
            "max_body_bytes",
            "max_images_per_request",
            "max_pixels",
            "default_top_k",
            "decode_threads",
            "max_connections",
        ):
            if getattr(self, field) < 1:
                raise ValueError(f"ServeConfig.{field} must be >= 1, got {getattr(self, field)}")
        if not all(math.isfinite(v) for v in (self.max_wait_ms, self.decode_wait_ms, self.request_timeout_s)) or (
            self.max_wait_ms < 0 or self.decode_wait_ms < 0 or self.request_timeout_s <= 0
        ):
            raise ValueError(
                "ServeConfig: max_wait_ms and decode_wait_ms must be finite and >= 0, request_timeout_s finite and > 0"
            )
        for field in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "body_rate_window_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ServeConfig.{field} must be > 0, got {getattr(self, field)}")
        if self.min_body_rate < 0:
            raise ValueError(f"ServeConfig.min_body_rate must be >= 0, got {self.min_body_rate}")
