"""The FastAPI application: classify endpoints, health/ready, labels, Prometheus metrics.

=========================  ==========================================================
``POST /classify``         one or many images (multipart files, JSON ``{"images":
                           [base64, ...]}``, or one raw ``image/*`` body) -> top-k
                           ``{"id", "name", "probability"}`` per image (``?top_k=5``)
``GET /health``            200 while the process runs
``GET /ready``             200 once the model is loaded and a warm-up batch has run;
                           503 before that and while shutting down
``GET /labels``            the class names, in id order
``GET /metrics``           Prometheus text
``/v2/...``                KServe v2 / Triton JSON protocol (:mod:`interop.serving.kserve`)
=========================  ==========================================================

Every refusal is ``{"error": "<one line>"}`` with a 4xx/5xx status; no traceback is
ever sent. Request bodies over ``max_body_bytes`` get 413 before the app reads them.
Under uvicorn, :mod:`interop.serving.connections` adds read timeouts and the connection
limit, answered the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from interop.serving.batcher import DynamicBatcher
from interop.serving.config import ServeConfig
from interop.serving.errors import MalformedRequest, NotReady, RequestTimeout, ServeError, ShuttingDown
from interop.serving.images import preprocess, set_pixel_limit
from interop.serving.inputs import read_images
from interop.serving.metrics import ServerMetrics
from interop.serving.model import ServedModel, top_k
from interop.serving.triton import TritonStats

log = logging.getLogger("interop.serving")

ARRIVED_WHILE_DRAINING = (
    "vitjax.arrived_while_draining"  # ASGI scope key: was the server draining when the request came in
)
CUT_BY_GUARD = (
    "vitjax.cut_by_guard"  # ASGI scope key: the error kind for which the connection guard cut this request (a 408)
)


class ServingState:
    """The served model, the batcher and the server's life cycle (warming up, ready, draining)."""

    def __init__(self, model: ServedModel, config: ServeConfig):
        self.model, self.config = model, config
        self.metrics = ServerMetrics(config.max_batch_size)
        self.triton_stats = TritonStats(model.name, self.metrics.registry)
        self.batcher = DynamicBatcher(
            model.predict_probs,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            decode_wait_ms=config.decode_wait_ms,
            max_queue_images=config.max_queue_images,
            metrics=self.metrics,
        )
        self.decoder = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.decode_threads, thread_name_prefix="decode"
        )
        self.ready = False
        self.draining = False  # set on SIGTERM: new requests are refused, in-flight ones finish
        self.warm_up_error: str | None = None
        self.routes: list = []  # the app's routes, for the metrics' endpoint label
        self.refuse_app = None  # ASGI app answering a connection over the limit (set by create_app)
        self.grpc_port: int | None = None  # the gRPC service's bound port, once started

    def warm_up(self) -> None:
        """Runs the model at the batch sizes the batcher will use; then the server is ready."""
        size = self.model.img_size
        try:
            for batch in self.model.warm_up_sizes(self.config.max_batch_size):
                self.batcher.run_now(np.zeros((batch, 3, size, size), np.float32))
        except Exception as e:  # stays not ready, and says why
            self.warm_up_error = f"warm-up failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            log.error("%s", self.warm_up_error)
            return
        self.ready = True
        log.info("%s on %s: warmed up, ready", self.model.name, self.model.backend)

    def check_accepting(self, request: Request) -> None:
        """Refuses a request that arrived after SIGTERM, or before the warm-up finished.

        Arrival is when the request's headers came in (stamped by :class:`RequestMetrics`), not
        when its handler starts: a request still sending its body when SIGTERM lands is in
        flight and is served.
        """
        if self.draining and request.scope.get(ARRIVED_WHILE_DRAINING, True):
            raise ShuttingDown("server is shutting down")
        if not self.ready:
            raise NotReady("model is warming up; retry when GET /ready says ready")

    async def preprocess_all(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """Decodes and transforms every image on the decode threads; the first bad one fails the request."""
        loop = asyncio.get_running_loop()
        expected = self.batcher.expect(len(blobs))  # a batch about to run may wait for these (see batcher)
        coming = False
        try:
            jobs = [
                loop.run_in_executor(
                    self.decoder, _preprocess_one, data, self.model.transform, self.config.max_pixels, name
                )
                for name, data in blobs
            ]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            coming = True
            return np.stack(results)
        finally:
            expected.done(coming)

    async def classify(self, images: np.ndarray) -> np.ndarray:
        """NCHW batch -> probabilities, through the dynamic batcher, within the request timeout."""
        probs, _, _ = await self.classify_timed(images)
        return probs

    async def classify_timed(self, images: np.ndarray) -> tuple[np.ndarray, float, float]:
        """As :meth:`classify`, with the images' mean seconds queued and in the model."""
        timeout = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(self.batcher.submit_timed(images), timeout)
        except TimeoutError:
            raise RequestTimeout(f"not classified within {timeout:g} s (server overloaded)") from None

    def parse_top_k(self, value: str | None) -> int:
        if value is None:
            return min(self.config.default_top_k, self.model.num_classes)
        try:
            k = int(value)
        except ValueError:
            raise MalformedRequest(f"top_k={value!r} is not an integer") from None
        if not 1 <= k <= self.model.num_classes:
            raise MalformedRequest(f"top_k={k} outside 1..{self.model.num_classes}")
        return k


def _preprocess_one(data: bytes, transform, max_pixels: int, name: str) -> np.ndarray:
    return preprocess(data, transform, max_pixels=max_pixels, name=name)


def error_response(state: ServingState, status: int, kind: str, reason: str) -> JSONResponse:
    state.metrics.errors.labels(kind).inc()
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: buffers at most ``limit`` body bytes; beyond that, 413.

    A client that announced an oversized body and asked ``Expect: 100-continue`` gets 413
    before it sends the body. Otherwise the rest of the body is read and discarded (up to
    ``4 * limit`` bytes) before answering, so that the client, still writing, is not reset
    before it reads the 413; the connection is then closed.
    """

    def __init__(self, app, state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.state.config.max_body_bytes
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            reason = f"body of {declared.decode(errors='replace')} bytes exceeds the limit of {limit} bytes"
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await _discard_body(receive, 4 * limit)
            return await self._refuse(scope, receive, send, reason)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                if message.get("more_body", False):
                    await _discard_body(receive, 4 * limit - size)
                return await self._refuse(scope, receive, send, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, reason: str):
        response = error_response(self.state, 413, "body_too_large", reason)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


async def _discard_body(receive, budget: int) -> None:
    """Reads and drops request body chunks until the body ends, the client leaves or ``budget`` bytes are read."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _endpoint(scope, routes) -> str:
    """The route template a request matched (bounded label set), else ``other``."""
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
    return "other"


class RequestMetrics:
    """ASGI middleware: per request, the status code, latency and in-flight count; and whether it arrived draining.

    A request that ends without a response is counted as what ended it: code 408 with the
    guard's error kind when the connection guard cut a slow upload, code 499 with the kind
    ``client_disconnected`` when the client left. One cancelled by the graceful-shutdown
    timeout is answered here with a JSON 503 (uvicorn would send plain text).
    """

    def __init__(self, app, state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics, start = self.state.metrics, time.perf_counter()
        status, disconnected = {"code": None}, False  # code: None until the response starts

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = str(message["status"])
            await send(message)

        async def receive_and_notice():
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        scope[ARRIVED_WHILE_DRAINING] = self.state.draining
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive_and_notice, send_and_record)
            if status["code"] is None:
                status["code"] = self._ended_without_response(scope, disconnected)
        except asyncio.CancelledError:
            if status["code"] is None:  # no response yet: the graceful-shutdown timeout cut it
                response = error_response(
                    self.state, 503, "shutting_down", "server shut down before this request finished; retry"
                )
                response.headers["Connection"] = "close"
                with contextlib.suppress(Exception):
                    await response(scope, receive, send_and_record)
            raise
        finally:
            metrics.in_flight.dec()
            endpoint = _endpoint(scope, self.state.routes)
            metrics.requests.labels(endpoint, status["code"] or "500").inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _ended_without_response(self, scope, disconnected: bool) -> str:
        """The code to count for a request the app ended without answering."""
        kind = scope.get(CUT_BY_GUARD)
        if kind is not None:
            code = "408"
        elif disconnected:
            code, kind = "499", "client_disconnected"  # nginx's code for "client closed request"
        else:
            return "500"
        self.state.metrics.errors.labels(kind).inc()
        return code


async def _start_grpc(state: ServingState, v2):
    """The KServe v2 gRPC service on ``config.grpc_address`` (same state, batcher and statistics), or None."""
    if state.config.grpc_address is None:
        return None
    from interop.serving.grpc_service import create_grpc_server

    server = create_grpc_server(
        v2, max_message_bytes=state.config.max_body_bytes, max_concurrent_rpcs=state.config.max_connections
    )
    host, _, port = state.config.grpc_address.rpartition(":")
    state.grpc_port = server.add_insecure_port(f"{host}:{port}")
    if not state.grpc_port:
        raise OSError(f"cannot bind the gRPC service to {state.config.grpc_address}")
    await server.start()
    log.info("KServe v2 gRPC on %s:%d", host, state.grpc_port)
    return server


def create_app(model: ServedModel, config: ServeConfig) -> FastAPI:
    """The application for ``model``; its :class:`ServingState` is ``app.state.serving``."""
    state = ServingState(model, config)
    set_pixel_limit(config.max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        warm = asyncio.get_running_loop().run_in_executor(None, state.warm_up)  # /health answers meanwhile
        grpc_server = await _start_grpc(state, app.state.kserve)
        try:
            yield
        finally:
            state.draining = True
            if grpc_server is not None:
                await grpc_server.stop(grace=config.request_timeout_s)
            await warm
            await state.batcher.stop()
            state.decoder.shutdown(wait=False)

    app = FastAPI(
        title=f"vitjax: {model.name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, debug=False
    )
    app.state.serving = state

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return error_response(state, e.status, e.kind, e.reason)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(state, e.status_code, kind, str(e.detail).splitlines()[0] if e.detail else kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(state, 400, "malformed_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(state, 500, "internal", f"internal error ({type(e).__name__})")

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        state.check_accepting(request)
        k = state.parse_top_k(request.query_params.get("top_k"))
        blobs = await read_images(request, config.max_images_per_request)
        probs = await state.classify(await state.preprocess_all(blobs))
        return {
            "model": model.name,
            "backend": model.backend,
            "predictions": [{"top_k": row} for row in top_k(probs, model.labels, k)],
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": state.warm_up_error or "warming up"}, status_code=503)
        return {
            "status": "ready",
            "model": model.name,
            "backend": model.backend,
            "max_batch_size": config.max_batch_size,
        }

    @app.get("/labels")
    async def labels() -> dict[str, Any]:
        return {"model": model.name, "num_classes": model.num_classes, "labels": model.labels}

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.batcher.queued)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    from interop.serving.kserve import add_kserve_routes

    app.state.kserve = add_kserve_routes(app, state)
    state.routes = list(app.routes)

    async def refuse_connection(scope, receive, send):
        """The answer to a connection over ``max_connections`` (the request's body, if any, is read first)."""
        if dict(scope["headers"]).get(b"expect", b"").lower() != b"100-continue":
            await _discard_body(receive, config.max_body_bytes)
        reason = f"server busy: all {config.max_connections} connections in use; retry later"
        response = error_response(state, 503, "too_many_connections", reason)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    state.refuse_app = RequestMetrics(refuse_connection, state)
    app.add_middleware(BodyLimit, state=state)
    app.add_middleware(RequestMetrics, state=state)
    return app
