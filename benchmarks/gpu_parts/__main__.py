"""``python -m benchmarks.gpu_parts JOB ARGS_JSON OUT_JSONL``: one job of ``benchmarks.gpu`` (see the package doc)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.gpu_parts.common import Recorder, Sizes


def _jobs() -> dict:
    from benchmarks.gpu_parts import data, env, parity, throughput

    return {
        "env": env.run,
        "parity": parity.run,
        "train-jax": throughput.train_jax,
        "train-timm": throughput.train_timm,
        "infer-jax": throughput.infer_jax,
        "infer-timm": throughput.infer_timm,
        "data": data.run,
    }


def main(argv: list[str]) -> None:
    job, args = argv[0], json.loads(argv[1])
    rec = Recorder(Path(argv[2]), float(args["deadline"]))
    sizes = Sizes.toy() if args.get("toy") else Sizes.full()
    start = time.perf_counter()
    _jobs()[job](args, rec, sizes)
    rec.write({"item": "done", "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main(sys.argv[1:])
