"""How our TensorRT backends configure Paddle Inference, as PaddleClas's users learned it.

* **LayerNorm stays in float32 under fp16.** TNT_small loses accuracy when LayerNorm, or the
  skip-LayerNorm fusion (``trt_skip_layernorm_fuse_pass``), runs in half precision: Paddle's own
  inference tests turn that pass off for tnt_small fp16, and PaddleX keeps ``layer_norm`` out
  of half precision. In fp16 we do both for every model: the pass is deleted and ``layer_norm``
  is kept out of TensorRT, so it runs in Paddle's float32 GPU kernel.
* **Engines are cached.** Building engines for dynamic shapes takes minutes; with
  ``use_static`` they are serialized into a cache directory next to the model
  (``<model_dir>/_trt_cache``) and reused by later runs with the same settings.
* **Declared batch range.** The engine is built for batches ``1..max_batch``; a larger batch is
  refused before it reaches TensorRT (``InputShapeError`` in :mod:`interop.deploy`).

These settings are plain data, so ``interop backends`` and the parity report show them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

CACHE_DIR_NAME = "_trt_cache"
# Paddle Inference passes that fuse LayerNorm with the residual add inside TensorRT.
LAYERNORM_FUSE_PASSES = ("trt_skip_layernorm_fuse_pass", "preln_skip_layernorm_fuse_pass")


@dataclasses.dataclass(frozen=True)
class TensorRTSettings:
    precision: str  # "fp32" | "fp16"
    img_size: int
    max_batch: int
    cache_dir: Path
    workspace_bytes: int = 1 << 30
    min_subgraph_size: int = 3
    ops_kept_out: tuple[str, ...] = ()
    passes_deleted: tuple[str, ...] = ()

    def shapes(self) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[int]]]:
        """(min, max, opt) input shapes of the dynamic-shape engine."""
        image = [3, self.img_size, self.img_size]
        return {"x": [1, *image]}, {"x": [self.max_batch, *image]}, {"x": [1, *image]}

    def describe(self) -> str:
        parts = [self.precision, f"dynamic batch 1..{self.max_batch}", f"engines cached in {self.cache_dir}"]
        if self.ops_kept_out:
            parts.append(f"kept out of TensorRT (float32): {', '.join(self.ops_kept_out)}")
        if self.passes_deleted:
            parts.append(f"passes off: {', '.join(self.passes_deleted)}")
        return "; ".join(parts)

    def apply(self, config: Any, inference: Any) -> None:
        """Configures a ``paddle.inference.Config`` (GPU already enabled) with these settings."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        precision = inference.PrecisionType.Half if self.precision == "fp16" else inference.PrecisionType.Float32
        config.enable_tensorrt_engine(
            workspace_size=self.workspace_bytes,
            max_batch_size=self.max_batch,
            min_subgraph_size=self.min_subgraph_size,
            precision_mode=precision,
            use_static=True,
            use_calib_mode=False,
        )
        config.set_optim_cache_dir(str(self.cache_dir))
        config.set_trt_dynamic_shape_info(*self.shapes())
        for name in self.passes_deleted:
            config.delete_pass(name)
        if self.ops_kept_out:
            config.exp_disable_tensorrt_ops(list(self.ops_kept_out))


def tensorrt_settings(model_dir: str | Path, precision: str, img_size: int, max_batch: int = 8) -> TensorRTSettings:
    """Our TensorRT configuration for the inference model in ``model_dir``."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"tensorrt precision {precision!r}; use 'fp32' or 'fp16'")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    half = precision == "fp16"
    return TensorRTSettings(
        precision=precision,
        img_size=int(img_size),
        max_batch=int(max_batch),
        cache_dir=Path(model_dir) / CACHE_DIR_NAME,
        ops_kept_out=("layer_norm",) if half else (),
        passes_deleted=LAYERNORM_FUSE_PASSES if half else (),
    )
