"""Hand-written kernels that XLA calls inside jitted code (custom calls).

:mod:`vitjax.kernels.onednn`: oneDNN's matmul for the dense layers on the CPU (training speed), the ops JAX calls.
:mod:`vitjax.kernels.build`: compiling and loading its library (toolchain, cache key, private oneDNN copy).
Optional: nothing here is imported by the models until a model asks for ``matmul="onednn"``.
"""
