"""The errors interop raises, under one base class, and how a native library's error is quoted.

* :class:`InteropError`: the base of every error ``interop`` raises itself; catch it to
  report any interop failure as one line.

  * :class:`InferenceModelError`: an inference model (or ONNX) file that cannot be written,
    read, or mapped to a model; :class:`LayerOrderMismatch` is the case where its parameters,
    taken in creation order, do not fit one model's key table.
  * :class:`BackendUnavailable`: a deployment backend this machine cannot run.
  * :class:`InputShapeError`: a batch that does not fit a model's input.
  * :class:`PaddleImportOrderError`: Paddle asked for after TensorFlow was imported.

Weights errors come from the Paddle-free layer beneath (:class:`vitjax.WeightsError`:
``PdparamsError``, ``WeightMismatchError``), which never imports interop; catch
``(WeightsError, InteropError)`` for both. Each class keeps the built-in base its callers
have always caught (``ValueError`` or ``RuntimeError``).
"""

from __future__ import annotations


class InteropError(Exception):
    """The base of every error raised by :mod:`interop` itself."""


class InferenceModelError(InteropError, ValueError):
    """An inference model directory (or ONNX file) that cannot be written, read, or mapped to a model."""


class LayerOrderMismatch(InferenceModelError):
    """An inference model's parameters, matched by layer creation order and shape, do not fit a model.

    The message is the one-line reason, e.g. ``"12 linear layers, DeiT_tiny_patch16_224 has 50"``.
    """


class BackendUnavailable(InteropError, RuntimeError):
    """A backend this machine (or this Paddle build) cannot run."""


class InputShapeError(InteropError, ValueError):
    """A batch that does not fit the model's input."""


class PaddleImportOrderError(InteropError, RuntimeError):
    """Paddle (or Paddle2ONNX) requested after TensorFlow was imported, which would crash the process."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message, or its type name when the message is blank.

    Native libraries (Paddle, ONNX Runtime) put a C++ trace after the first line; this is
    the part worth quoting in a one-line error.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
