"""Errors the server answers with a status code and a one-line reason."""

from __future__ import annotations


class ServeError(Exception):
    """A request the server refuses: ``status`` (HTTP), ``kind`` (the metrics label), one-line ``reason``."""

    status = 400
    kind = "bad_request"

    def __init__(self, reason: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(reason)
        self.reason = " ".join(str(reason).split())  # always one line
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class BadImage(ServeError):
    kind = "bad_image"


class ImageTooLarge(ServeError):
    kind = "image_too_large"


class EmptyInput(ServeError):
    kind = "empty_input"


class TooManyImages(ServeError):
    kind = "too_many_images"


class BodyTooLarge(ServeError):
    status, kind = 413, "body_too_large"


class UnsupportedMediaType(ServeError):
    status, kind = 415, "unsupported_media_type"


class MalformedRequest(ServeError):
    kind = "malformed_request"


class QueueFull(ServeError):
    status, kind = 503, "queue_full"


class ShuttingDown(ServeError):
    status, kind = 503, "shutting_down"


class NotReady(ServeError):
    status, kind = 503, "not_ready"


class RequestTimeout(ServeError):
    status, kind = 504, "timeout"


class InferenceFailed(ServeError):
    status, kind = 500, "inference_failed"
