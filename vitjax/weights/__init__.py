"""PaddleClas weights in JAX, with no Paddle needed.

* :mod:`vitjax.weights.errors`: ``WeightsError``, the base of ``PdparamsError`` and ``WeightMismatchError``.
* :mod:`vitjax.weights.pdparams`: read/write ``.pdparams`` files (a restricted unpickler).
* :mod:`vitjax.weights.mapping`: the one key table between PaddleClas and Flax names.
* :mod:`vitjax.weights.convert`: ``state_dict`` <-> Flax variables, ``load_pdparams``/``save_pdparams``.
* :mod:`vitjax.weights.pretrained`: PaddleClas's published weights by name, ``load_pretrained``
  (a checked, resumable download cache: :mod:`vitjax.weights.download`).

The public door to these is the ``vitjax`` namespace (``vitjax.load_pdparams``,
``vitjax.load_pretrained``, ``vitjax.WeightsError``, ...); this package holds the modules.
``interop`` (Paddle inference models, deployment) builds on them; nothing here imports
``interop`` or Paddle.
"""
