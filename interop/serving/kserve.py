"""KServe v2 / Triton JSON inference protocol, so Triton-style HTTP clients work unchanged.

``POST /v2/models/{name}/infer`` takes one input tensor, one of:

* ``x``: ``FP32`` ``[N, 3, S, S]``, the model's own input (already preprocessed; finite values);
* ``images``: ``BYTES`` ``[N]``, encoded images (JPEG, PNG, ...) as base64 strings, preprocessed here;
* ``pixels``: ``UINT8`` ``[N, H, W, 3]``, RGB pixels, preprocessed here;

and returns ``probabilities`` (``FP32 [N, num_classes]``), the one output a request may
name. Another input or output name is refused with a 400 that names the expected ones.

Triton's binary tensor extension, which ``tritonclient`` uses by default, works both ways:
with an ``Inference-Header-Content-Length: n`` header the body is n bytes of JSON, then
the raw data of each input that has ``"parameters": {"binary_data_size": k}``, in order
(``FP32``/``UINT8`` little-endian, ``BYTES`` as 4-byte little-endian lengths each followed by
its bytes); the answer is binary too when the request asks (``"binary_data_output": true``
in its parameters, or ``"binary_data": true`` on the output). Request bodies may be
``Content-Encoding: gzip`` or ``deflate`` (the decompressed size is held to the body limit), and
the answer is compressed the same way when the request's ``Accept-Encoding`` asks for it.
``/v2/models/{name}/versions/1/...`` is the same model as ``/v2/models/{name}/...``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import time
import zlib
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from interop.serving.errors import BodyTooLarge, MalformedRequest, ServeError, UnsupportedMediaType
from interop.serving.images import preprocess_array
from interop.serving.inputs import check_count, decode_base64, media_type, parse_json
from interop.serving.triton import model_config

INPUT_NAME, OUTPUT_NAME = "x", "probabilities"
INPUTS = {"x": "FP32", "images": "BYTES", "pixels": "UINT8"}  # input name -> its datatype
EXPECTED_INPUTS = "'x' (FP32 [N, 3, S, S]), 'images' (BYTES [N], encoded images) or 'pixels' (UINT8 [N, H, W, 3])"


class UnknownModel(ServeError):
    status, kind = 404, "unknown_model"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A ``Content-Encoding: gzip|deflate`` body, decompressed to at most ``limit`` bytes (then 413)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"content encoding {encoding!r} not accepted; send gzip, deflate or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise MalformedRequest(f"body is not valid {encoding} ({e})") from None
    if not inflater.eof and not inflater.unconsumed_tail and len(data) <= limit:
        raise MalformedRequest(f"body is a truncated {encoding} stream")
    if inflater.unused_data:
        raise MalformedRequest(f"body has {len(inflater.unused_data)} bytes after its {encoding} stream")
    if len(data) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return data


def response_encoding(accept_encoding: str) -> str | None:
    """``gzip`` or ``deflate`` when the client accepts it (in its order of preference, q > 0), else None."""
    best, best_q = None, 0.0
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if name in ("gzip", "deflate") and q > best_q:
            best, best_q = name, q
    return best


def split_binary(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary tensor data after it (Triton's binary tensor extension)."""
    if header_length is None:
        return parse_json(body), memoryview(b"")
    digits = header_length.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the {len(body)}-byte body"
        )
    n = int(header_length)
    return parse_json(body[:n]), memoryview(body)[n:]


def split_bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    """Binary BYTES data: ``count`` elements, each a 4-byte little-endian length and its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise MalformedRequest(f"input {name}: BYTES data ends inside a length prefix")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        if offset + 4 + size > len(raw):
            raise MalformedRequest(f"input {name}: BYTES element of {size} bytes runs past the data")
        items.append(bytes(raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    if len(items) != count:
        raise MalformedRequest(f"input {name}: {len(items)} BYTES elements for shape [{count}]")
    return items


def _flat(data: Any, shape: list[int], dtype, name: str, raw: memoryview | None = None) -> np.ndarray:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedRequest(f"input {name}: shape must be a list of non-negative integers")
    try:
        if raw is not None:
            if len(raw) % np.dtype(dtype).itemsize:
                raise ValueError(f"{len(raw)} bytes is not a whole number of {np.dtype(dtype).name} values")
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        else:
            array = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise MalformedRequest(
            f"input {name}: data is not {np.dtype(dtype).name} numbers ({str(e).splitlines()[0]})"
        ) from None
    if array.size != math.prod(shape):
        raise MalformedRequest(f"input {name}: {array.size} values for shape {shape}")
    return array.reshape(shape)


@dataclasses.dataclass
class V2Input:
    """One input tensor of a v2 request, however it came (JSON, binary extension, gRPC)."""

    name: Any
    datatype: Any
    shape: Any
    data: Any = None  # JSON data (numbers; base64 strings for BYTES)
    raw: bytes | memoryview | None = None  # little-endian tensor bytes (binary extension, gRPC raw contents)
    blobs: list[bytes] | None = None  # BYTES elements already split (gRPC contents)


@dataclasses.dataclass
class V2Output:
    """The answer's one output: probabilities, or Triton classification strings."""

    datatype: str
    shape: list[int]
    probs: np.ndarray | None = None
    entries: list[bytes] | None = None

    def json_data(self) -> list:
        return self.probs.reshape(-1).tolist() if self.probs is not None else [e.decode() for e in self.entries]

    def raw_bytes(self) -> bytes:
        if self.probs is not None:
            return np.ascontiguousarray(self.probs, dtype="<f4").tobytes()
        return b"".join(len(entry).to_bytes(4, "little") + entry for entry in self.entries)


class KServeModel:
    """The KServe v2 / Triton protocol for ``state.model``, shared by the HTTP routes and the gRPC service."""

    def __init__(self, state):
        self.state, self.model, self.config = state, state.model, state.config

    def check(self, name: str, version: str | None = None) -> None:
        if name != self.model.name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version not in (None, "", "1"):
            raise UnknownModel(f"unknown version {version!r} of {self.model.name!r}; it has version '1'")

    def is_ready(self) -> bool:
        return self.state.ready and not self.state.draining

    def metadata(self) -> dict[str, Any]:
        s = self.model.img_size
        return {
            "name": self.model.name,
            "versions": ["1"],
            "platform": f"vitjax-{self.model.backend}",
            # The model's own input; `images` (BYTES) and `pixels` (UINT8) are accepted in its place, but left
            # undeclared: Triton's tools (perf_analyzer) send every declared input.
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, s, s]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.model.num_classes]}],
        }

    def config_(self) -> dict[str, Any]:
        return model_config(self.model, self.config)

    def stats(self) -> dict[str, Any]:
        return {"model_stats": [self.state.triton_stats.as_triton()]}

    def repository_index(self) -> list[dict[str, str]]:
        entry = {"name": self.model.name, "version": "1", "state": "READY" if self.is_ready() else "UNAVAILABLE"}
        if not self.is_ready():
            entry["reason"] = "warming up" if not self.state.draining else "shutting down"
        return [entry]

    def output_request(self, names: list[Any], classification: Any) -> int:
        """Checks the requested outputs; returns the classification count (0: probabilities)."""
        if len(names) > 1:
            raise MalformedRequest(f"{len(names)} outputs requested; this model has one, {OUTPUT_NAME!r}")
        for name in names:
            if name != OUTPUT_NAME:
                raise MalformedRequest(f"unknown output {name!r}; this model's output is {OUTPUT_NAME!r}")
        if classification is None or classification is False or classification == 0:
            return 0
        n = self.model.num_classes
        if isinstance(classification, bool) or not isinstance(classification, int) or not 1 <= classification <= n:
            raise MalformedRequest(f"output parameter classification={classification!r}: a whole number from 1 to {n}")
        return classification

    async def infer(self, tensor: V2Input, top_k: int) -> V2Output:
        """Preprocesses, classifies through the batcher and shapes the output; counts Triton's statistics."""
        began = time.perf_counter()
        try:
            images = await self.images(tensor)
            decoded = time.perf_counter()
            probs, queue_s, infer_s = await self.state.classify_timed(images)
            classified = time.perf_counter()
            if top_k:
                order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
                labels = self.model.labels
                entries = [f"{row[i]:f}:{int(i)}:{labels[i]}".encode() for row, idx in zip(probs, order) for i in idx]
                output = V2Output("BYTES", [len(probs), top_k], entries=entries)
            else:
                output = V2Output("FP32", list(probs.shape), probs=probs)
        except Exception:
            self.state.triton_stats.record_failure(time.perf_counter() - began)
            raise
        done = time.perf_counter()
        self.state.triton_stats.record_success(
            len(probs),
            total_s=done - began,
            queue_s=queue_s,
            input_s=decoded - began,
            infer_s=infer_s,
            output_s=done - classified,
        )
        return output

    async def images(self, tensor: V2Input) -> np.ndarray:
        """The request's images as a preprocessed NCHW float32 batch."""
        name, datatype, shape, data, raw = tensor.name, tensor.datatype, tensor.shape, tensor.data, tensor.raw
        config, model = self.config, self.model
        if name not in INPUTS:
            raise MalformedRequest(f"unknown input {name!r}; this model takes {EXPECTED_INPUTS}")
        if datatype != INPUTS[name]:
            raise MalformedRequest(f"input {name}: datatype {datatype!r}, expected {INPUTS[name]} ({EXPECTED_INPUTS})")
        if not isinstance(shape, list) or not shape:
            raise MalformedRequest(f"input {name}: missing shape")
        check_count(shape[0] if isinstance(shape[0], int) else 0, config.max_images_per_request)
        s = model.img_size
        if datatype == "FP32":
            if shape[1:] != [3, s, s]:
                raise MalformedRequest(
                    f"input {name}: FP32 shape {shape} does not fit the model input [N, 3, {s}, {s}]"
                )
            x = _flat(data, shape, np.float32, name, raw)
            if not np.isfinite(x).all():
                raise MalformedRequest(f"input {name}: NaN or infinite values (the model takes normalized pixels)")
            return x
        if datatype == "BYTES":
            if shape[1:] not in ([], [1]):
                raise MalformedRequest(f"input {name}: BYTES shape must be [N] or [N, 1]")
            if tensor.blobs is not None:
                if len(tensor.blobs) != shape[0]:
                    raise MalformedRequest(f"input {name}: {len(tensor.blobs)} BYTES elements for shape {shape}")
                return await self.state.preprocess_all([(f"{name}[{i}]", b) for i, b in enumerate(tensor.blobs)])
            if raw is not None:
                blobs = [(f"{name}[{i}]", item) for i, item in enumerate(split_bytes_elements(raw, shape[0], name))]
                return await self.state.preprocess_all(blobs)
            if not isinstance(data, list) or len(data) != shape[0]:
                raise MalformedRequest(f"input {name}: BYTES shape must be [N] or [N, 1] with N base64 strings")
            blobs = [
                (f"{name}[{i}]", decode_base64(item[0] if isinstance(item, list) and item else item, f"{name}[{i}]"))
                for i, item in enumerate(data)
            ]
            return await self.state.preprocess_all(blobs)
        if datatype == "UINT8":
            if len(shape) != 4 or shape[3] != 3:
                raise MalformedRequest(f"input {name}: UINT8 shape {shape} is not [N, H, W, 3] RGB pixels")
            if math.prod(shape) > config.max_pixels * 3 * config.max_images_per_request:
                raise MalformedRequest(f"input {name}: shape {shape} too large")
            pixels = _flat(data, shape, np.uint8, name, raw)
            return np.stack(
                [
                    preprocess_array(p, model.transform, max_pixels=config.max_pixels, name=f"{name}[{i}]")
                    for i, p in enumerate(pixels)
                ]
            )
        raise AssertionError(datatype)  # INPUTS names every datatype handled above


def _parameters(entry: dict) -> dict:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest('"parameters" must be an object')
    return parameters


def _binary_part(tensor: dict, binary: memoryview) -> memoryview | None:
    """The input's binary data (the one input is the first and only binary part), or None for JSON data."""
    size = _parameters(tensor).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or size < 0 or size != len(binary):
        raise MalformedRequest(
            f"input {tensor.get('name')}: binary_data_size {size!r} but {len(binary)} bytes of binary data follow the header"
        )
    return binary


def add_kserve_routes(app: FastAPI, state) -> KServeModel:
    """Adds the v2 health, metadata, infer, config, statistics and repository endpoints to ``app``."""
    v2 = KServeModel(state)
    model, config = state.model, state.config

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return SERVER_METADATA

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": v2.is_ready()}, status_code=200 if v2.is_ready() else 503)

    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        v2.check(name, version)
        return v2.metadata()

    async def model_ready(name: str, version: str | None = None):
        v2.check(name, version)
        return JSONResponse({"name": model.name, "ready": v2.is_ready()}, status_code=200 if v2.is_ready() else 503)

    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        v2.check(name, version)
        state.check_accepting(request)
        if media_type(request) not in ("application/json", "application/octet-stream", ""):
            raise UnsupportedMediaType(
                f"content type {media_type(request)!r}: send application/json (or octet-stream with the binary extension)"
            )
        body = decompress(await request.body(), request.headers.get("content-encoding", ""), config.max_body_bytes)
        payload, binary = split_binary(body, request.headers.get("inference-header-content-length"))
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise MalformedRequest('v2 request must have "inputs": [one tensor]')
        outputs = payload.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise MalformedRequest('"outputs" must be a list of {"name": ...}')
        binary_out = bool(_parameters(payload).get("binary_data_output", False))
        for output in outputs:
            binary_out = bool(_parameters(output).get("binary_data", binary_out))
        top_k = v2.output_request(
            [o.get("name") for o in outputs], _parameters(outputs[0]).get("classification") if outputs else None
        )
        tensor = inputs[0]
        result = await v2.infer(
            V2Input(
                tensor.get("name"),
                tensor.get("datatype"),
                tensor.get("shape"),
                data=tensor.get("data"),
                raw=_binary_part(tensor, binary),
            ),
            top_k,
        )
        output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": result.datatype, "shape": result.shape}
        response: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": [output]}
        if "id" in payload:
            response["id"] = payload["id"]
        headers: dict[str, str] = {}
        if not binary_out:
            output["data"] = result.json_data()
            body, content_type = json.dumps(response).encode(), "application/json"
        else:
            raw = result.raw_bytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps(response).encode()
            body, content_type = header + raw, "application/octet-stream"
            headers["Inference-Header-Content-Length"] = str(len(header))  # of the header before compression
        encoding = response_encoding(request.headers.get("accept-encoding", ""))
        if encoding:
            body = gzip.compress(body, compresslevel=6) if encoding == "gzip" else zlib.compress(body, 6)
            headers["Content-Encoding"] = encoding
        headers["Vary"] = "Accept-Encoding"
        return Response(body, media_type=content_type, headers=headers)

    async def model_config_route(name: str, version: str | None = None) -> dict[str, Any]:
        v2.check(name, version)
        return v2.config_()

    async def model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        v2.check(name, version)
        return v2.stats()

    @app.get("/v2/models/stats")
    async def all_model_stats() -> dict[str, Any]:
        return v2.stats()

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict[str, str]]:
        return v2.repository_index()

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])
        app.add_api_route(prefix + "/config", model_config_route, methods=["GET"])
        app.add_api_route(prefix + "/stats", model_stats, methods=["GET"])
    return v2


SERVER_METADATA = {
    "name": "vitjax",
    "version": "2",
    "extensions": ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository"],
}
