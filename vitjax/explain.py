"""``mode=explain`` of ``vitjax.main``: where the model looks, as one PNG per image.

For every image of ``predict.images`` it writes ``<workdir>/explain/<image name>.png``: the
image as the model sees it (PaddleClas's eval resize and crop), the class token's attention
rollout (:func:`vitjax.models.features.class_token_rollout`) over it, and the top
``predict.topk`` classes. The weights come from where ``predict`` takes them (``init.pretrained``,
``init.pdparams``, ``init.checkpoint``, else the workdir's latest checkpoint). Every image is
read before anything is written, and each PNG appears complete or not at all.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vitjax.data.transforms import center_crop, load_rgb, normalize, resize_short
from vitjax.files import atomic_file
from vitjax.models.features import class_token_rollout, forward_intermediates
from vitjax.training import reporting
from vitjax.training.evaluation import class_names
from vitjax.training.experiment import Experiment, to_host

CHUNK = 16  # images per forward pass


def explain(config, workdir: str | Path) -> list[Path]:
    """Writes one PNG per image of ``predict.images`` into ``<workdir>/explain/`` and returns their paths."""
    paths = [p.strip() for p in config.predict.images.split(",") if p.strip()]
    if not paths:
        raise ValueError("mode=explain needs predict.images (comma-separated image paths)")
    exp = Experiment(config, workdir)
    transform = exp.eval_transform()
    # Read (and crop) every image first: an unreadable one stops the run before any PNG is written.
    crops = [
        center_crop(resize_short(load_rgb(p), transform.resize_short, transform.interpolation), transform.crop_size)
        for p in paths
    ]
    params = jax.tree.map(to_host, exp.params_for_inference())
    look = jax.jit(functools.partial(_look, exp.eval_model))
    heats, probs = [], []
    for start in range(0, len(crops), CHUNK):
        inputs = np.stack([normalize(c, transform.mean, transform.std) for c in crops[start : start + CHUNK]])
        heat, prob = look({"params": params}, inputs)
        heats.extend(np.asarray(heat))
        probs.extend(np.asarray(prob))
    names = class_names(config, probs[0].shape[-1])
    out_dir = exp.workdir / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, crop, heat, prob in zip(paths, crops, heats, probs, strict=True):
        top = np.argsort(-prob)[: min(config.predict.topk, prob.shape[-1])]
        target = out_dir / _png_name(path, written)
        figure = draw(crop, heat, [(names[i], float(prob[i])) for i in top], f"{config.model.name}: {Path(path).name}")
        with atomic_file(target) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        written.append(target)
        if reporting.is_chief():
            print(f"{path} -> {target}  (top-1 {names[top[0]]}, {prob[top[0]]:.3f})")
    return written


def _look(model, variables, images) -> tuple[jax.Array, jax.Array]:
    """The class token's rollout map ``[batch, H/p, W/p]`` and the class probabilities."""
    out = forward_intermediates(model, variables, images, attention=True)
    return class_token_rollout(model, out.attention), jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)


def _png_name(path: str, taken: Sequence[Path]) -> str:
    """``<stem>.png``, numbered when two images share a stem."""
    stem, names = Path(path).stem, {p.name for p in taken}
    name, k = f"{stem}.png", 2
    while name in names:
        name, k = f"{stem}_{k}.png", k + 1
    return name


def heat_overlay(heat: np.ndarray, size: int) -> np.ndarray:
    """A patch-grid map scaled to its maximum and resized (bilinear) to ``size x size`` pixels."""
    heat = np.asarray(heat, np.float32)
    heat = heat / max(float(heat.max()), 1e-12)
    return np.asarray(Image.fromarray(heat, mode="F").resize((size, size), Image.BILINEAR))


def draw(crop: np.ndarray, heat: np.ndarray, top: Sequence[tuple[str, float]], title: str):
    """A matplotlib ``Figure``: the crop, the crop under the heat map, the top classes as bars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), layout="constrained")
    photo, overlay, bars = figure.subplots(1, 3, width_ratios=(1, 1, 1.3))
    photo.imshow(crop)
    photo.set_title("input (eval crop)")
    overlay.imshow(crop)
    shown = overlay.imshow(heat_overlay(heat, crop.shape[0]), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0)
    overlay.set_title("class-token attention rollout")
    figure.colorbar(shown, ax=overlay, fraction=0.046, label="rollout / its maximum")
    for axis in (photo, overlay):
        axis.set_xticks([])
        axis.set_yticks([])
    labels = [name if len(name) <= 28 else name[:27] + "…" for name, _ in top]
    values = [p for _, p in top]
    bars.barh(range(len(top))[::-1], values, color="tab:blue")
    bars.set_yticks(range(len(top))[::-1], labels)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
    bars.set_title(f"top-{len(top)}")
    for row, value in zip(range(len(top))[::-1], values, strict=True):
        bars.text(min(value + 0.02, 0.85), row, f"{value:.3f}", va="center")
    figure.suptitle(title)
    return figure
