"""Sizes, peaks and the job-side helpers shared by the parts of ``benchmarks.gpu``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

TRAIN_MODELS = ("DeiT_small_patch16_224", "DeiT_base_patch16_224", "TNT_small")
INFER_MODELS = ("DeiT_small_patch16_224", "DeiT_base_patch16_224", "TNT_small")
# The test-size variants that stand in for them in --dry-run (timm builds the same architectures).
TOY_MODELS = ("DeiT_test_patch8_32", "DeiT_test_distilled_patch8_32", "TNT_test_patch16_32")
# timm's family and the keyword arguments that give it our test-size architectures.
TOY_TIMM = {
    "DeiT_test_patch8_32": (
        "deit_tiny_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4),
    ),
    "DeiT_test_distilled_patch8_32": (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4),
    ),
    "TNT_test_patch16_32": (
        "tnt_s_patch16_224",
        dict(img_size=32, embed_dim=64, inner_dim=4, depth=2, num_heads_outer=4, num_heads_inner=2),
    ),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does: ``full()`` on a GPU, ``toy()`` for ``--dry-run`` on a CPU."""

    parity_models: tuple[str, ...]
    parity_batch: int
    photos: int  # real photos (and their mirror images) for the bf16 top-1 agreement
    train_models: tuple[str, ...]
    train_batch: int  # halved on out-of-memory, per engine
    train_warmup: int
    train_steps: int
    train_seconds: float  # timed steps run at least train_steps and about this long
    infer_models: tuple[str, ...]
    infer_batches: tuple[int, ...]
    infer_calls: int
    infer_seconds: float
    compile_backend: str  # torch.compile's backend
    loader_images: int
    loader_batch: int
    loader_seconds: float

    @staticmethod
    def full() -> Sizes:
        from benchmarks.timm_peer import TIMM_NAMES

        return Sizes(
            parity_models=tuple(TIMM_NAMES),
            parity_batch=2,
            photos=16,
            train_models=TRAIN_MODELS,
            train_batch=256,
            train_warmup=3,
            train_steps=10,
            train_seconds=4.0,
            infer_models=INFER_MODELS,
            infer_batches=(1, 64, 256),
            infer_calls=10,
            infer_seconds=1.5,
            compile_backend="inductor",
            loader_images=256,
            loader_batch=128,
            loader_seconds=8.0,
        )

    @staticmethod
    def toy() -> Sizes:
        return Sizes(
            parity_models=TOY_MODELS[1:],
            parity_batch=2,
            photos=4,
            train_models=TOY_MODELS[:1],
            train_batch=4,
            train_warmup=2,
            train_steps=2,
            train_seconds=0.0,
            infer_models=TOY_MODELS[:1],
            infer_batches=(1, 4),
            infer_calls=2,
            infer_seconds=0.0,
            # inductor would compile C++ for minutes on a small CPU; dynamo's graph capture still runs.
            compile_backend="eager",
            loader_images=16,
            loader_batch=8,
            loader_seconds=0.5,
        )


# bf16 dense tensor-core peaks from NVIDIA's data sheets (TFLOP/s, without sparsity), matched
# against the device name in order: the first rule whose words all appear wins.
BF16_PEAKS = (
    (("H100", "PCIE"), 756.0, "H100 PCIe"),
    (("H100", "NVL"), 835.0, "H100 NVL"),
    (("H100",), 989.0, "H100 SXM"),
    (("H800", "PCIE"), 756.0, "H800 PCIe"),
    (("H800",), 989.0, "H800 SXM"),
    (("H200", "NVL"), 835.0, "H200 NVL"),
    (("H200",), 989.0, "H200 SXM"),
    (("GH200",), 989.0, "GH200"),
    (("A100",), 312.0, "A100"),
    (("A800",), 312.0, "A800"),
    (("L40S",), 362.0, "L40S"),
    (("L4",), 121.0, "L4"),
)


def bf16_peak(device_name: str) -> tuple[float | None, str]:
    """(peak bf16 dense FLOP/s, how it was chosen) for a GPU's name; (None, "unknown peak ...") otherwise."""
    upper = device_name.upper()
    for words, tflops, label in BF16_PEAKS:
        if all(w in upper for w in words):
            return tflops * 1e12, f"{tflops:.0f} TFLOP/s bf16 dense ({label} data sheet, matched on {device_name!r})"
    return None, f"unknown peak: {device_name!r} is not in the table of known GPUs, so no MFU"


def train_flops_per_image(macs: int) -> float:
    """Training FLOPs per image: 3 passes (forward, and a backward of twice its cost) x 2 FLOP per MAC."""
    return 3 * 2 * macs


MFU_FORMULA = (
    "MFU = img/s x 6 x MACs per image / peak; MACs per image from vitjax.models.complexity (every Linear, "
    "Conv and the attention matmuls), x2 FLOP per MAC, x3 for forward + backward"
)


class Recorder:
    """Appends one JSON line per finished item to the job's output file."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline = Path(path), deadline

    def left(self) -> float:
        return self.deadline - time.time()

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def error_text(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def is_oom(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def missing_modules(*names: str) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]
