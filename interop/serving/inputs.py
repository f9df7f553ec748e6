"""Reading images out of a request: multipart upload, JSON with base64, or a raw image body."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from interop.serving.errors import EmptyInput, MalformedRequest, TooManyImages, UnsupportedMediaType

ACCEPTED = "multipart/form-data, application/json (base64 images), or a raw image/* or application/octet-stream body"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise EmptyInput("no images in the request")
    if count > limit:
        raise TooManyImages(f"{count} images in one request (limit {limit})")


def decode_base64(text: Any, name: str) -> bytes:
    """Base64 (standard alphabet, optionally a ``data:...;base64,`` URI) -> bytes."""
    if not isinstance(text, str):
        raise MalformedRequest(f"{name}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedRequest(f"{name}: invalid base64 ({e})") from None


def parse_json(body: bytes) -> Any:
    if not body:
        raise EmptyInput("empty body (expected JSON)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedRequest(f"malformed JSON ({e})") from None


async def read_images(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """``(name, encoded bytes)`` per image; a one-line :class:`ServeError` for anything else."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        return await _read_multipart(request, max_images)
    if kind == "application/json":
        return _read_json(await request.body(), max_images)
    if kind.startswith("image/") or kind == "application/octet-stream":
        body = await request.body()
        if not body:
            raise EmptyInput("empty body (0 bytes)")
        return [("image 0", body)]
    raise UnsupportedMediaType(f"content type {kind or '(none)'!r} not accepted; send {ACCEPTED}")


async def _read_multipart(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
    except Exception as e:  # starlette's MultiPartException / HTTPException for malformed or oversized forms
        message = getattr(e, "detail", None) or getattr(e, "message", None) or str(e) or type(e).__name__
        if "Too many files" in str(message):
            raise TooManyImages(f"more than {max_images} images in one request (limit {max_images})") from None
        raise MalformedRequest(f"malformed multipart body ({message})") from None
    try:
        uploads = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        check_count(len(uploads), max_images)
        return [
            (f"image {i} ({upload.filename or key})", await upload.read()) for i, (key, upload) in enumerate(uploads)
        ]
    finally:
        await form.close()


def _read_json(body: bytes, max_images: int) -> list[tuple[str, bytes]]:
    payload = parse_json(body)
    if isinstance(payload, dict) and "image" in payload and "images" not in payload:
        items = [payload["image"]]
    elif isinstance(payload, dict) and isinstance(payload.get("images"), list):
        items = payload["images"]
    else:
        raise MalformedRequest('JSON body must be {"images": [base64, ...]} or {"image": base64}')
    check_count(len(items), max_images)
    return [(f"image {i}", decode_base64(item, f"image {i}")) for i, item in enumerate(items)]
