"""Input-pipeline throughput with the DeiT ImageNet training recipe, as workers grow.

``python -m benchmarks.loader`` writes ~200 ImageNet-sized JPEGs (500x375, quality 90, cut
from scikit-image's photos) into a temporary image folder and times
:class:`vitjax.data.pipeline.TrainLoader` on them with ``configs/deit_small.py``'s data and
augmentation settings (random resized crop to 224, bicubic, flip, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25, ImageNet mean/std; mixup/cutmix run on the
device and are not part of the loader). Rows:

* ``baseline``: the previous hand-written loader's design, re-stated here (a thread pool
  over the examples of a batch, the next batch prepared in a background thread), so the grain
  pipeline can be compared against it on the same images and transform;
* ``threads`` and ``processes`` (``data.worker_kind``) with 1, 2 and 4 workers
  (``data.num_workers``); ``main thread`` with 0 workers.

Then the decoding study, per ``--decode-sizes`` (500x375 and 2000x1500 by default): the
JPEG decoders alone (one thread), the share of the recipe's crops that allow a 1/2, 1/4, 1/8
scale decode, and the loader (threads, ``--decode-workers``) with the files read undecoded
(``sources.EncodedSource``) and decoded by the transform: by Pillow or by OpenCV (``auto``,
which gives Pillow's pixels exactly) at full size, and at the reduced scale the crop allows.

Each row reads batches after a warm-up batch (which pays for spawning process workers),
for at least ``--seconds``; images/s per core divides by the cores the workers can use
(``min(workers, cores)``). Results go to ``benchmarks/results/loader.{json,md}`` with the CPU
named as ``lscpu`` names it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
IMAGE_SIZE = (500, 375)  # ImageNet's typical width x height


def write_jpegs(folder: Path, count: int, classes: int = 4, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> None:
    """``count`` JPEGs of ``size`` (500x375) in ``folder/<class>/``: random crops of scikit-image's
    photos, rescaled and lightly noised so that no two files are alike (like real photos, they
    compress to ~50-150 KB at 500x375)."""
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        crop_h = int(rng.integers(height // 2, height + 1))
        crop_w = min(width, int(crop_h * size[0] / size[1]))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(size, Image.BICUBIC)
        pixels = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, (size[1], size[0], 3))
        target = folder / f"class_{i % classes}" / f"img_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(target, quality=90)


def deit_transform(config_name: str = "deit_small", **decode) -> tuple[Callable, str]:
    """The training transform ``vitjax`` builds for ``configs/<config_name>.py``, and a
    description of its settings; ``decode`` (``max_reduce``, ``decoder``) goes to
    ``train_transform`` for the images an ``EncodedSource`` hands out undecoded."""
    import importlib.util

    import vitjax
    from vitjax.data.augment import train_transform

    path = Path(__file__).resolve().parents[1] / "configs" / f"{config_name}.py"
    spec = importlib.util.spec_from_file_location(f"loader_bench_{config_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    model = vitjax.get_spec(config.model.name)
    size = config.model.img_size or model.img_size
    mean, std, augment = model.eval_transform.mean, model.eval_transform.std, config.augment

    def transform(image, rng):
        return train_transform(image, rng, size=size, mean=mean, std=std, augment=augment, **decode)

    transform.size, transform.augment = size, augment
    a = augment
    described = (
        f"configs/{config_name}.py: {size}px random resized crop {tuple(a.crop_scale)} {a.interpolation}, "
        f"hflip {a.hflip}, RandAugment {a.randaugment}, random erasing {a.random_erasing}"
    )
    return transform, described


def baseline_batches(source, transform, batch_size: int, num_workers: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The previous loader's design: a pool of threads maps the examples of a batch, and one
    background thread prepares the next batch while the current one is consumed."""
    pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
    ahead = concurrent.futures.ThreadPoolExecutor(1)
    order = np.random.default_rng(seed).permutation(len(source))

    def example(position: int) -> np.ndarray:
        image, _ = source.load(int(order[position % len(order)]))
        return transform(image, np.random.default_rng([seed, position]))

    def batch(step: int) -> np.ndarray:
        return np.stack(list(pool.map(example, range(step * batch_size, (step + 1) * batch_size))))

    pending, step = ahead.submit(batch, 0), 0
    try:
        while True:
            ready = pending.result()
            step += 1
            pending = ahead.submit(batch, step)
            yield ready
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=False, cancel_futures=True)


def time_batches(batches: Iterator, batch_size: int, min_seconds: float, min_batches: int) -> dict[str, float]:
    """Images/s over the batches after the first (the warm-up, also timed and reported)."""
    start = time.perf_counter()
    next(batches)
    warmup = time.perf_counter() - start
    start, count = time.perf_counter(), 0
    cpu_start = os.times()
    while count < min_batches or time.perf_counter() - start < min_seconds:
        next(batches)
        count += 1
    seconds = time.perf_counter() - start
    batches.close()
    return {
        "images_per_s": count * batch_size / seconds,
        "seconds": seconds,
        "batches": count,
        "warmup_s": warmup,
        "main_process_cpu_s": sum(os.times()[:2]) - sum(cpu_start[:2]),
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def decoder_rows(folder: Path, paths: list[str], min_seconds: float) -> list[dict]:
    """JPEG decoding alone, one core (this thread): Pillow and OpenCV at full size and with
    libjpeg's DCT scaling (Pillow's ``draft``, OpenCV's ``IMREAD_REDUCED_COLOR_*``), which a
    random resized crop may use when its box, scaled down, still covers the output; and
    ``EncodedImage.decode`` (``auto``: OpenCV where it gives Pillow's pixels) as the loader calls it."""
    from PIL import Image

    from vitjax.data.transforms import encoded_image

    blobs = [(folder / p).read_bytes() for p in paths]

    def pillow(blob: bytes, reduce: int) -> np.ndarray:
        import io

        with Image.open(io.BytesIO(blob)) as image:
            if reduce > 1:
                image.draft("RGB", (image.size[0] // reduce, image.size[1] // reduce))
            return np.asarray(image.convert("RGB"))

    def ours(blob: bytes, reduce: int) -> np.ndarray:
        return encoded_image(blob, "benchmark").decode(reduce)

    decoders: list[tuple[str, Callable[[bytes], np.ndarray]]] = [
        ("Pillow", lambda b: pillow(b, 1)),
        ("Pillow draft 1/2", lambda b: pillow(b, 2)),
        ("Pillow draft 1/4", lambda b: pillow(b, 4)),
    ]
    try:
        import cv2

        def opencv(blob: bytes, flag: int) -> np.ndarray:
            return cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), flag), cv2.COLOR_BGR2RGB)

        decoders += [
            (f"OpenCV {cv2.__version__}", lambda b: opencv(b, cv2.IMREAD_COLOR)),
            ("OpenCV reduced 1/2", lambda b: opencv(b, cv2.IMREAD_REDUCED_COLOR_2)),
            ("OpenCV reduced 1/4", lambda b: opencv(b, cv2.IMREAD_REDUCED_COLOR_4)),
        ]
    except ImportError:
        pass
    decoders += [
        ("vitjax auto", lambda b: ours(b, 1)),
        ("vitjax auto 1/2", lambda b: ours(b, 2)),
        ("vitjax auto 1/4", lambda b: ours(b, 4)),
    ]
    rows = []
    for name, decode in decoders:
        shape = decode(blobs[0]).shape
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            for blob in blobs:
                decode(blob)
            count += len(blobs)
        seconds = time.perf_counter() - start
        rows.append({"decoder": name, "images_per_s": count / seconds, "shape": list(shape)})
        print(f"{name:20s} {count / seconds:7.1f} img/s  {shape}", flush=True)
    return rows


def reduction_shares(image_size: tuple[int, int], transform, draws: int = 20000) -> dict[str, float]:
    """The share of the recipe's random resized crops of an ``image_size`` JPEG that decode at
    each scale (``augment.decode_reduction``), from ``draws`` crops."""
    from vitjax.data.augment import crop_box, decode_reduction
    from vitjax.data.transforms import EncodedImage

    header = EncodedImage(b"", "header", image_size[0], image_size[1], "JPEG", "RGB", 1)
    rng = np.random.default_rng(0)
    counts = {k: 0 for k in (1, 2, 4, 8)}
    for _ in range(draws):
        if transform.augment.random_resized_crop:
            box = crop_box(*image_size, rng, tuple(transform.augment.crop_scale))
        else:
            box = (0, 0, *image_size)
        counts[decode_reduction(header, box, transform.size)] += 1
    return {f"1/{k}": counts[k] / draws for k in counts}


DECODE_VARIANTS = {  # label -> train_transform's decoding arguments, for EncodedSource images
    "Pillow, full size": dict(decoder="pillow", max_reduce=1),
    "auto (OpenCV), full size": dict(decoder="auto", max_reduce=1),
    "Pillow, reduced": dict(decoder="pillow", max_reduce=8),
    "auto (OpenCV), reduced": dict(decoder="auto", max_reduce=8),
}


def decode_study(args: argparse.Namespace, image_size: tuple[int, int]) -> dict:
    """Decoders alone and the loader with each of :data:`DECODE_VARIANTS`, on ``image_size`` JPEGs."""
    from vitjax.data.pipeline import TrainLoader
    from vitjax.data.sources import EncodedSource, ImageFolderSource

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        count = args.images if image_size == IMAGE_SIZE else args.large_images
        write_jpegs(Path(tmp), count, size=image_size)
        source = ImageFolderSource(tmp)
        sizes = [os.path.getsize(Path(tmp) / os.fsdecode(p)) for p in source.paths]
        print(f"{image_size[0]}x{image_size[1]}: {count} JPEGs, mean {np.mean(sizes) / 1024:.0f} KB", flush=True)
        decoders = decoder_rows(Path(tmp), [os.fsdecode(p) for p in source.paths], args.seconds / 2)
        shares = reduction_shares(image_size, deit_transform(args.config)[0])
        for workers in args.decode_workers:
            for label, decode in DECODE_VARIANTS.items():
                transform, _ = deit_transform(args.config, **decode)
                loader = TrainLoader(EncodedSource(source), transform, args.batch_size, seed=0, num_workers=workers)
                timing = time_batches(loader.iterate(0), args.batch_size, args.seconds, args.min_batches)
                rows.append({"decode": label, "workers": workers, **timing})
                print(f"{label:26s} {workers} workers: {timing['images_per_s']:7.1f} img/s", flush=True)
    return {
        "image_size": list(image_size),
        "images": count,
        "mean_jpeg_kb": float(np.mean(sizes) / 1024),
        "reduction_shares": shares,
        "decoders": decoders,
        "rows": rows,
    }


def run(args: argparse.Namespace) -> dict:
    from vitjax.data.pipeline import TrainLoader
    from vitjax.data.sources import ImageFolderSource

    cores = len(os.sched_getaffinity(0))
    transform, described = deit_transform(args.config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        source = ImageFolderSource(tmp)
        sizes = [os.path.getsize(Path(tmp) / os.fsdecode(p)) for p in source.paths]
        decoders = []  # the decoding study times them (on these and larger JPEGs)
        if args.decoders_only or IMAGE_SIZE not in args.decode_sizes:
            decoders = decoder_rows(Path(tmp), [os.fsdecode(p) for p in source.paths], args.seconds / 2)
        if args.decoders_only or args.decode_only:
            args.workers = []
        plan = [("main thread", "threads", 0)] if args.workers else []
        plan += [("baseline", "baseline", n) for n in args.workers]
        plan += [(kind, kind, n) for kind in ("threads", "processes") for n in args.workers]
        for label, kind, workers in plan:
            if kind == "baseline":
                batches = baseline_batches(source, transform, args.batch_size, workers)
            else:
                loader = TrainLoader(source, transform, args.batch_size, seed=0, num_workers=workers, worker_kind=kind)
                batches = loader.iterate(0)
            timing = time_batches(batches, args.batch_size, args.seconds, args.min_batches)
            used = max(1, min(workers, cores))
            row = {
                "loader": label,
                "workers": workers,
                "cores_used": used,
                **timing,
                "images_per_s_per_core": timing["images_per_s"] / used,
            }
            rows.append(row)
            print(
                f"{label:12s} {workers} workers: {row['images_per_s']:7.1f} img/s  "
                f"{row['images_per_s_per_core']:6.1f} img/s/core  (warm-up {timing['warmup_s']:.1f} s)",
                flush=True,
            )
    study = [] if args.decoders_only else [decode_study(args, size) for size in args.decode_sizes]
    import grain

    return {
        "cpu": cpu_name(),
        "cores": cores,
        "load_average_before": args.load_before,
        "python": platform.python_version(),
        "grain": grain.__version__,
        "recipe": described,
        "images": args.images,
        "image_size": list(IMAGE_SIZE),
        "mean_jpeg_kb": float(np.mean(sizes) / 1024),
        "batch_size": args.batch_size,
        "rows": rows,
        "decoders": decoders,
        "decode_study": study,
    }


def decoder_table(rows: list[dict], heading: str) -> list[str]:
    """Markdown lines of a decoder table: img/s and the decoded array's shape per decoder."""
    return [f"| {heading} | img/s | output |", "|---|---|---|"] + [
        f"| {r['decoder']} | {r['images_per_s']:.1f} | {r['shape']} |" for r in rows
    ]


def markdown(results: dict) -> str:
    lines = [
        "# Input pipeline throughput (DeiT ImageNet recipe)",
        "",
        f"CPU: {results['cpu']}, {results['cores']} cores available (load average {results['load_average_before']:.2f} "
        f"before the run); Python {results['python']}, grain {results['grain']}.",
        f"Recipe: {results['recipe']}.",
        f"Data: {results['images']} JPEGs of {results['image_size'][0]}x{results['image_size'][1]} "
        f"(mean {results['mean_jpeg_kb']:.0f} KB), batch {results['batch_size']}, decoded and augmented per step.",
        "",
    ]
    if results["rows"]:
        lines += ["| loader | workers | img/s | img/s per core | warm-up s |", "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(
            f"| {row['loader']} | {row['workers']} | {row['images_per_s']:.1f} | "
            f"{row['images_per_s_per_core']:.1f} | {row['warmup_s']:.1f} |"
        )
    if results.get("decoders"):
        lines += [
            "",
            "JPEG decoding alone, one thread (libjpeg's DCT scaling: reduced output):",
            "",
        ]
        lines += decoder_table(results["decoders"], "decoder")
    lines += [
        "",
        "`baseline` is the previous thread-pool loader's design; `threads` / `processes` are",
        "`data.worker_kind` of the grain pipeline; per core = img/s / min(workers, cores).",
        "The loaders above decode with `load_rgb`'s default (`auto`: OpenCV where installed,",
        "which gives Pillow's pixels exactly; else Pillow) at full size.",
        "",
    ]
    for study in results.get("decode_study", []):
        width, height = study["image_size"]
        shares = ", ".join(f"{k} {v:.1%}" for k, v in study["reduction_shares"].items())
        lines += [
            f"## Decoding {width}x{height} JPEGs ({study['images']} files, mean {study['mean_jpeg_kb']:.0f} KB)",
            "",
            f"Crops of the recipe decoded at each scale: {shares}.",
            "",
        ]
        lines += decoder_table(study["decoders"], "decoder, one thread")
        lines += [
            "",
            "| loader (threads, files read undecoded) | workers | img/s |",
            "|---|---|---|",
        ]
        lines += [f"| {r['decode']} | {r['workers']} | {r['images_per_s']:.1f} |" for r in study["rows"]]
        lines.append("")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="deit_small", help="configs/<name>.py whose data/augment settings to use")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per row")
    parser.add_argument("--min-batches", type=int, default=4)
    parser.add_argument("--decoders-only", action="store_true", help="time the JPEG decoders, not the loaders")
    parser.add_argument("--decode-only", action="store_true", help="the decoding study, not the worker rows")
    parser.add_argument(
        "--decode-sizes", type=_size, nargs="*", default=[IMAGE_SIZE, (2000, 1500)], help="WxH of the decoding study"
    )
    parser.add_argument("--decode-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--large-images", type=int, default=64, help="JPEGs per decoding study size but 500x375")
    parser.add_argument("--out", type=Path, default=RESULTS / "loader")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
