"""What Triton's own tools ask of a server beyond inference: model config, statistics, repository index.

* ``GET /v2/models/{name}[/versions/1]/config``: a Triton-shaped model configuration (inputs and
  outputs with Triton's ``TYPE_*`` names, ``max_batch_size``, ``dynamic_batching``).
* ``GET /v2/models/stats`` and ``/v2/models/{name}[/versions/1]/stats``: Triton's statistics
  extension (``inference_count``, ``execution_count``, ``last_inference`` and, per phase, a
  ``count`` and a total ``ns``: ``success``, ``fail``, ``queue``, ``compute_input``,
  ``compute_infer``, ``compute_output``), counted per v2 inference request.
* ``POST /v2/repository/index``: the one model, ``READY`` or ``UNAVAILABLE``.

The same counts are exported on ``/metrics`` under Triton's metric names
(``nv_inference_request_success``, ``nv_inference_request_failure``, ``nv_inference_count``,
``nv_inference_exec_count``, ``nv_inference_request_duration_us``,
``nv_inference_queue_duration_us``, ``nv_inference_compute_input_duration_us``,
``nv_inference_compute_infer_duration_us``, ``nv_inference_compute_output_duration_us``, with
``model`` and ``version`` labels), so Grafana dashboards made for Triton read them unchanged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_METRIC_OF_PHASE = {
    "success": "nv_inference_request_duration_us",
    "queue": "nv_inference_queue_duration_us",
    "compute_input": "nv_inference_compute_input_duration_us",
    "compute_infer": "nv_inference_compute_infer_duration_us",
    "compute_output": "nv_inference_compute_output_duration_us",
}


@dataclasses.dataclass
class _Phase:
    count: int = 0
    ns: int = 0


class TritonStats:
    """Per-request inference statistics of one model, in Triton's shape, mirrored as Prometheus counters."""

    def __init__(self, model_name: str, registry: CollectorRegistry):
        self.model_name = model_name
        self.phases = {phase: _Phase() for phase in PHASES}
        self.inference_count = 0  # images
        self.execution_count = 0  # requests that ran the model
        self.last_inference_ms = 0
        self._lock = threading.Lock()
        labels = ["model", "version"]
        self._success = Counter(
            "nv_inference_request_success", "Successful inference requests", labels, registry=registry
        )
        self._failure = Counter("nv_inference_request_failure", "Failed inference requests", labels, registry=registry)
        self._count = Counter("nv_inference_count", "Images inferred", labels, registry=registry)
        self._exec = Counter("nv_inference_exec_count", "Inference executions (requests)", labels, registry=registry)
        self._durations = {
            phase: Counter(name, f"Cumulative {phase} time in microseconds", labels, registry=registry)
            for phase, name in _METRIC_OF_PHASE.items()
        }
        for counter in (self._success, self._failure, self._count, self._exec, *self._durations.values()):
            counter.labels(model_name, "1")  # present at 0 before the first request

    def record_success(
        self, images: int, *, total_s: float, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        times = {
            "success": total_s,
            "queue": queue_s,
            "compute_input": input_s,
            "compute_infer": infer_s,
            "compute_output": output_s,
        }
        with self._lock:
            for phase, seconds in times.items():
                self.phases[phase].count += 1
                self.phases[phase].ns += max(int(seconds * 1e9), 0)
                self._durations[phase].labels(self.model_name, "1").inc(max(seconds, 0.0) * 1e6)
            self.inference_count += images
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
        self._success.labels(self.model_name, "1").inc()
        self._count.labels(self.model_name, "1").inc(images)
        self._exec.labels(self.model_name, "1").inc()

    def record_failure(self, total_s: float) -> None:
        with self._lock:
            self.phases["fail"].count += 1
            self.phases["fail"].ns += max(int(total_s * 1e9), 0)
        self._failure.labels(self.model_name, "1").inc()

    def as_triton(self) -> dict[str, Any]:
        with self._lock:
            inference_stats = {phase: {"count": p.count, "ns": p.ns} for phase, p in self.phases.items()}
            return {
                "name": self.model_name,
                "version": "1",
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": inference_stats,
                "batch_stats": [],
            }


def model_config(model, config) -> dict[str, Any]:
    """A Triton-shaped model configuration for the served model (batch dimension implicit, as Triton's)."""
    s = model.img_size
    return {
        "name": model.name,
        "platform": f"vitjax-{model.backend}",
        "backend": model.backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": config.max_images_per_request,
        # As in the v2 metadata: the model's own input only (`images` and `pixels` are accepted in its
        # place, undeclared, since Triton's tools send every declared input).
        "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, s, s]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [model.num_classes]}],
        "dynamic_batching": {
            "preferred_batch_size": [config.max_batch_size],
            "max_queue_delay_microseconds": int(config.max_wait_ms * 1000),
        },
        "instance_group": [{"count": 1, "kind": "KIND_CPU" if "gpu" not in model.backend else "KIND_GPU"}],
    }
