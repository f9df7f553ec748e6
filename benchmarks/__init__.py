"""Side-by-side benchmarks: our JAX path against Paddle Inference, ONNX Runtime, timm and Paddle dygraph.

``python -m benchmarks.run`` (see ``benchmarks/run.py``) measures every engine on the same
weights, interleaved in one run; each engine runs in its own process (``benchmarks/worker.py``)
so its peak memory is its own. Each suite writes one current result to ``benchmarks/results/``;
finished investigations live in :mod:`benchmarks.studies`.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

# Investigations that moved to benchmarks/studies/: `python -m benchmarks.<name>` still runs them.
MOVED_TO_STUDIES = ("fused_attention", "thread_pinning", "train_matmuls", "train_step_control")


class _MovedToStudiesFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != "benchmarks" or name not in MOVED_TO_STUDIES:
            return None
        print(f"note: benchmarks.{name} moved to benchmarks.studies.{name}", file=sys.stderr)
        return importlib.util.spec_from_file_location(fullname, Path(__file__).parent / "studies" / f"{name}.py")


if not any(isinstance(f, _MovedToStudiesFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedToStudiesFinder())
