"""Side-by-side benchmarks: our JAX path against Paddle Inference, ONNX Runtime and Paddle dygraph.

``python -m benchmarks.run`` (see ``benchmarks/run.py``) measures every engine on the same
weights, interleaved in one run; each engine runs in its own process (``benchmarks/worker.py``)
so its peak memory is its own.
"""
