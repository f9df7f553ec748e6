"""Part 5, the input pipeline: images/s of ``vitjax``'s training loader with the DeiT ImageNet
recipe (``configs/deit_small.py``: random resized crop, flip, RandAugment, random erasing) on
this machine's CPU cores, on ImageNet-sized JPEGs cut from scikit-image's photos
(``benchmarks.loader``). The driver sets it beside what the GPU's training step consumes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.gpu_parts.common import Recorder, Sizes, error_text


def run(args: dict, rec: Recorder, sizes: Sizes) -> None:
    from benchmarks.loader import IMAGE_SIZE, deit_transform, time_batches, write_jpegs
    from vitjax.data.pipeline import TrainLoader
    from vitjax.data.sources import ImageFolderSource

    cores = len(os.sched_getaffinity(0))
    transform, described = deit_transform("deit_small")
    # Process workers, one per core, on a GPU machine; threads on the dry run's shared CPU.
    kind = "threads" if args.get("toy") else "processes"
    workers = min(2, cores) if args.get("toy") else cores
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), sizes.loader_images)
        source = ImageFolderSource(tmp)
        try:
            loader = TrainLoader(source, transform, sizes.loader_batch, seed=0, num_workers=workers, worker_kind=kind)
            timing = time_batches(loader.iterate(0), sizes.loader_batch, sizes.loader_seconds, 2)
            rec.write(
                {
                    "item": "loader",
                    "recipe": described,
                    "image_size": list(IMAGE_SIZE),
                    "images": sizes.loader_images,
                    "batch": sizes.loader_batch,
                    "cores": cores,
                    "worker_kind": kind,
                    "workers": workers,
                    **timing,
                }
            )
        except Exception as e:
            rec.write({"item": "loader", "worker_kind": kind, "workers": workers, "error": error_text(e)})
