"""Hand-written native code, each library compiled on first use into ``$VITJAX_CACHE/kernels``.

:mod:`vitjax.kernels.onednn`: oneDNN's matmul for the dense layers on the CPU (training speed), the ops JAX calls.
:mod:`vitjax.kernels.resample`: Pillow's bicubic resize and affine transform, bit for bit, for the
data pipeline (host speed); Pillow itself where the library does not build.
:mod:`vitjax.kernels.build`: compiling and loading them (toolchain, cache key, private oneDNN copy).
Optional: nothing here is imported by the models until a model asks for ``matmul="onednn"``.
"""
