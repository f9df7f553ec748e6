"""KServe v2 / Triton JSON inference protocol, so Triton-style HTTP clients work unchanged.

``POST /v2/models/{name}/infer`` takes one input tensor, one of:

* ``x``: ``FP32`` ``[N, 3, S, S]``, the model's own input (already preprocessed; finite values);
* ``images``: ``BYTES`` ``[N]``, encoded images (JPEG, PNG, ...) as base64 strings, preprocessed here;
* ``pixels``: ``UINT8`` ``[N, H, W, 3]``, RGB pixels, preprocessed here;

and returns ``probabilities`` (``FP32 [N, num_classes]``), the one output a request may
name. Another input or output name is refused with a 400 that names the expected ones. Binary tensor data (the
``Inference-Header-Content-Length`` extension) is not supported: 415.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from interop.serving.errors import MalformedRequest, ServeError, UnsupportedMediaType
from interop.serving.images import preprocess_array
from interop.serving.inputs import check_count, decode_base64, media_type, parse_json

INPUT_NAME, OUTPUT_NAME = "x", "probabilities"
INPUTS = {"x": "FP32", "images": "BYTES", "pixels": "UINT8"}  # input name -> its datatype
EXPECTED_INPUTS = "'x' (FP32 [N, 3, S, S]), 'images' (BYTES [N], encoded images) or 'pixels' (UINT8 [N, H, W, 3])"


class UnknownModel(ServeError):
    status, kind = 404, "unknown_model"


def _flat(data: Any, shape: list[int], dtype, name: str) -> np.ndarray:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedRequest(f"input {name}: shape must be a list of non-negative integers")
    try:
        array = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise MalformedRequest(f"input {name}: data is not {np.dtype(dtype).name} numbers ({str(e).splitlines()[0]})") from None
    if array.size != math.prod(shape):
        raise MalformedRequest(f"input {name}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def add_kserve_routes(app: FastAPI, state) -> None:
    """Adds the v2 health, metadata and infer endpoints for ``state.model`` to ``app``."""
    model, config = state.model, state.config

    def check_name(name: str) -> None:
        if name != model.name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {model.name!r}")

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "vitjax", "version": "2", "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        ok = state.ready and not state.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        check_name(name)
        s = model.img_size
        return {
            "name": model.name, "versions": ["1"], "platform": f"vitjax-{model.backend}",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, s, s]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, model.num_classes]}],
        }

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        check_name(name)
        ok = state.ready and not state.draining
        return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        check_name(name)
        state.check_accepting(request)
        if media_type(request) not in ("application/json", ""):
            raise UnsupportedMediaType(f"content type {media_type(request)!r}: only the JSON form of the v2 protocol is supported")
        payload = parse_json(await request.body())
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise MalformedRequest('v2 request must have "inputs": [one tensor]')
        outputs = payload.get("outputs") or []
        if not isinstance(outputs, list):
            raise MalformedRequest('"outputs" must be a list of {"name": ...}')
        for output in outputs:
            name = output.get("name") if isinstance(output, dict) else None
            if name != OUTPUT_NAME:
                raise MalformedRequest(f"unknown output {name!r}; this model's output is {OUTPUT_NAME!r}")
        images = await _images(inputs[0])
        probs = await state.classify(images)
        response = {
            "model_name": model.name, "model_version": "1",
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(probs.shape), "data": probs.reshape(-1).tolist()}],
        }
        if "id" in payload:
            response["id"] = payload["id"]
        return response

    async def _images(tensor: dict) -> np.ndarray:
        name, datatype, shape, data = tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
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
                raise MalformedRequest(f"input {name}: FP32 shape {shape} does not fit the model input [N, 3, {s}, {s}]")
            x = _flat(data, shape, np.float32, name)
            if not np.isfinite(x).all():
                raise MalformedRequest(f"input {name}: NaN or infinite values (the model takes normalized pixels)")
            return x
        if datatype == "BYTES":
            if not isinstance(data, list) or len(data) != shape[0] or shape[1:] not in ([], [1]):
                raise MalformedRequest(f"input {name}: BYTES shape must be [N] or [N, 1] with N base64 strings")
            blobs = [(f"{name}[{i}]", decode_base64(item[0] if isinstance(item, list) and item else item, f"{name}[{i}]")) for i, item in enumerate(data)]
            return await state.preprocess_all(blobs)
        if datatype == "UINT8":
            if len(shape) != 4 or shape[3] != 3:
                raise MalformedRequest(f"input {name}: UINT8 shape {shape} is not [N, H, W, 3] RGB pixels")
            if math.prod(shape) > config.max_pixels * 3 * config.max_images_per_request:
                raise MalformedRequest(f"input {name}: shape {shape} too large")
            pixels = _flat(data, shape, np.uint8, name)
            return np.stack([preprocess_array(p, model.transform, max_pixels=config.max_pixels, name=f"{name}[{i}]") for i, p in enumerate(pixels)])
        raise AssertionError(datatype)  # INPUTS names every datatype handled above
