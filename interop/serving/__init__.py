"""HTTP inference server for exported vitjax models (``python -m interop serve``).

Modules, one job each: :mod:`~interop.serving.config` (limits and batching knobs),
:mod:`~interop.serving.images` (bytes -> model input, with limits),
:mod:`~interop.serving.model` (the served model: predictor, transform, labels),
:mod:`~interop.serving.batcher` (dynamic batching off the event loop),
:mod:`~interop.serving.metrics` (Prometheus), :mod:`~interop.serving.app` (the FastAPI
app), :mod:`~interop.serving.kserve` (KServe v2 / Triton JSON protocol),
:mod:`~interop.serving.connections` (timeouts and the connection limit under uvicorn) and
:mod:`~interop.serving.cli` (the ``serve`` command under uvicorn).

Importing this package imports neither FastAPI nor Paddle; :func:`create_app` needs the
``serve`` extra (fastapi, uvicorn, python-multipart, prometheus-client).
"""

from interop.serving.config import ServeConfig
from interop.serving.model import ServedModel, load_served_model

__all__ = ["ServeConfig", "ServedModel", "create_app", "load_served_model"]


def create_app(model: "ServedModel", config: ServeConfig | None = None):
    """The FastAPI application serving ``model`` (see :mod:`interop.serving.app`)."""
    from interop.serving.app import create_app as _create_app

    return _create_app(model, config or ServeConfig())
