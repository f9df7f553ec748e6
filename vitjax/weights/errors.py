"""The errors of the weights layer, under one base class.

* :class:`WeightsError`: weights that cannot be read, written, or put into a model.

  * :class:`PdparamsError`: a ``.pdparams`` file that cannot be read or written (missing,
    empty, truncated, refused by the restricted unpickler, not a dict of arrays).
  * :class:`WeightMismatchError`: weights whose keys or shapes do not fit the requested
    model, or that fit no model (or several) when the model is guessed.

Both are ``ValueError``\\ s, as they always were. :mod:`interop`'s own errors
(``interop.InteropError``) are a separate tree, since this layer never imports interop.
"""

from __future__ import annotations


class WeightsError(ValueError):
    """Weights that cannot be read, written, or put into a model (the base of this package's errors)."""


class PdparamsError(WeightsError):
    """A ``.pdparams`` file that cannot be read or written."""


class WeightMismatchError(WeightsError):
    """Weights whose keys or shapes do not fit the requested model."""
