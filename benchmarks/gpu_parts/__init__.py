"""The pieces of ``python -m benchmarks.gpu``: each job runs in its own process.

``python -m benchmarks.gpu_parts JOB ARGS.json OUT.jsonl`` runs one job (``env``, ``parity``,
``train-jax``, ``train-timm``, ``infer-jax``, ``infer-timm``, ``data``) and appends one JSON
line to ``OUT.jsonl`` per finished item, so a job killed at its deadline keeps what it did.
The driver (:mod:`benchmarks.gpu`) never imports JAX or torch itself: a GPU is only touched
by one job process at a time, and each job's memory is returned when it exits.
"""
