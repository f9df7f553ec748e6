"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Requests by endpoint and status, errors by kind, latency, batch sizes, queue depth, connections."""

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vitjax_serve_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.errors = Counter("vitjax_serve_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.latency = Histogram(
            "vitjax_serve_request_seconds",
            "Request latency (receipt to response)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("vitjax_serve_images", "Images classified", registry=r)
        self.batch_size = Histogram(
            "vitjax_serve_batch_size",
            "Images per inference batch",
            buckets=tuple(range(1, max_batch_size + 1)),
            registry=r,
        )
        self.inference = Histogram(
            "vitjax_serve_inference_seconds", "Wall time of one inference batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("vitjax_serve_queue_depth", "Images waiting for a batch", registry=r)
        self.in_flight = Gauge("vitjax_serve_in_flight_requests", "Requests being handled", registry=r)
        self.open_connections = Gauge("vitjax_serve_open_connections", "Open client connections", registry=r)
        self.connections_closed = Counter(
            "vitjax_serve_connections_closed",
            "Connections the server closed early, by reason (timeouts, limit, malformed HTTP)",
            ["reason"],
            registry=r,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
