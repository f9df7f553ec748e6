"""Finished investigations: each answered one question, and its answer is in docs/performance.md.

They still run (``python -m benchmarks.studies.<name>``) so a figure can be re-measured on another
machine; their past results are in ``benchmarks/studies/results/``. The suites a user re-runs are
one level up, each writing one current result to ``benchmarks/results/``.

* :mod:`benchmarks.studies.fused_attention`: the fused oneDNN attention against the unfused one and XLA.
* :mod:`benchmarks.studies.thread_pinning`: pinning XLA's CPU workers, with and without idle gaps.
* :mod:`benchmarks.studies.train_matmuls`: the training step's matmuls one at a time: XLA, oneDNN, PyTorch.
* :mod:`benchmarks.studies.train_step_control`: our training step against a plain Flax ViT and timm.
"""
