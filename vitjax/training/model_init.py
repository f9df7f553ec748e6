"""Models from the config, and the weights they start from.

``init.pdparams`` (a PaddleClas file), ``init.pretrained`` (PaddleClas's published weights,
downloaded into the cache) or ``init.checkpoint`` (an orbax variables checkpoint or a
workdir) supply parameters; :func:`merge_loaded` lays them over freshly initialised ones,
so a head left out with ``init.head='skip'`` keeps its fresh values.
"""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from vitjax.models.layers import MATMUL_KERNELS
from vitjax.models.registry import create_model
from vitjax.training import checkpoints
from vitjax.training.steps import Teacher

log = logging.getLogger("vitjax")


def resolve_matmul(choice: str, num_devices: int | None = None, dtype: Any = jnp.float32) -> str:
    """``model.matmul`` as the model takes it: ``"auto"`` becomes ``"onednn"`` for a float32
    model on one CPU device where the kernel builds, else ``"xla"`` (the kernel is float32 only:
    other dtypes run XLA's matmuls whatever the choice); an explicit ``"onednn"`` must be able to run."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    if choice not in ("auto", *MATMUL_KERNELS):
        raise ValueError(f"model.matmul={choice!r}: expected auto or one of {MATMUL_KERNELS}")
    on_one_cpu = jax.default_backend() == "cpu" and num_devices == 1
    if choice == "xla" or (choice == "auto" and not (on_one_cpu and jnp.dtype(dtype) == jnp.float32)):
        return "xla"
    if num_devices != 1:
        raise ValueError(
            f"model.matmul='onednn' runs on one CPU device; this run has {num_devices} devices (use auto or xla)"
        )
    from vitjax.kernels import onednn

    reason = onednn.unavailable_reason()
    if reason is None:
        return "onednn"
    if choice == "onednn":
        raise onednn.KernelUnavailable(f"model.matmul='onednn': {reason}")
    if not _said_unavailable:
        _said_unavailable.append(reason)
        log.info(
            "dense layers use XLA's matmul (the oneDNN kernel, faster for training on the CPU, is unavailable: %s)",
            reason.splitlines()[0],
        )
    return "xla"


_said_unavailable: list[str] = []


def build_model(model_config, *, train: bool = True, num_devices: int | None = None) -> nn.Module:
    """The registered model ``model_config.name``; without ``train`` every dropout rate is 0.
    ``num_devices``: how many devices the model runs on (its mesh; default all), for ``model.matmul``."""
    return create_model(
        model_config.name,
        num_classes=model_config.num_classes,
        img_size=model_config.img_size or None,
        drop_rate=model_config.drop_rate if train else 0.0,
        attn_drop_rate=model_config.attn_drop_rate if train else 0.0,
        drop_path_rate=model_config.drop_path_rate if train else 0.0,
        dtype=jnp.dtype(model_config.dtype),
        matmul=resolve_matmul(model_config.get("matmul", "xla"), num_devices, model_config.dtype),
    )


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(height, width, channels)`` of the model's input images."""
    return (model.arch.img_size, model.arch.img_size, model.arch.in_chans)


def load_weights(
    model_config,
    pdparams: str,
    checkpoint: str,
    head: str,
    seed: int,
    pretrained: bool = False,
    use_ema: bool = False,
) -> dict | None:
    """Parameters from a ``.pdparams`` file, PaddleClas's published weights for the model
    (``pretrained``, downloaded into the cache) or an orbax checkpoint/workdir (numpy arrays);
    ``None`` when none is set. Setting more than one is a ``ValueError``. ``use_ema``: the
    checkpoint's EMA weights (an error for a ``.pdparams`` file, which has none)."""
    if sum(map(bool, (pdparams, checkpoint, pretrained))) > 1:
        raise ValueError("set only one of init.pdparams, init.pretrained and init.checkpoint")
    if use_ema and (pdparams or pretrained):
        raise ValueError(
            "init.use_ema=True: a .pdparams file has no EMA weights; expected init.checkpoint or a workdir"
        )
    if pretrained:
        from vitjax.weights.pretrained import download_pretrained

        pdparams = str(download_pretrained(model_config.name, quiet=jax.process_index() != 0))
    if pdparams:
        from vitjax.weights.convert import load_pdparams  # no Paddle import: a restricted unpickler

        variables = load_pdparams(
            pdparams,
            model_config.name,
            num_classes=model_config.num_classes,
            img_size=model_config.img_size or None,
            head=head,
            seed=seed,
        )
        return dict(variables["params"])
    if checkpoint:
        return dict(checkpoints.load_variables(checkpoint, ema=use_ema)["params"])
    return None


def merge_loaded(fresh: Any, loaded: dict) -> Any:
    """``fresh`` (host arrays) with every leaf that ``loaded`` has replaced. A loaded leaf the
    model lacks, or of another shape, is a ``ValueError`` naming it."""
    flat = flatten_dict(jax.tree.map(np.asarray, fresh))
    for path, value in flatten_dict(loaded).items():
        if path not in flat or flat[path].shape != value.shape:
            raise ValueError(f"loaded parameter {'/'.join(path)} {value.shape} does not fit the model")
        flat[path] = value
    return unflatten_dict(flat)


def make_teacher(config, num_devices: int | None = None) -> Teacher | None:
    """The frozen teacher of ``distill.teacher`` (float32, no dropout) as ``images -> logits``,
    or ``None`` without one. Its weights come from ``distill.teacher_pdparams`` or
    ``distill.teacher_checkpoint``; naming a teacher without weights is a ``ValueError``."""
    d = config.distill
    if not d.teacher:
        return None
    teacher_config = config.model.copy_and_resolve_references()
    teacher_config.unlock()
    teacher_config.name, teacher_config.img_size, teacher_config.dtype = d.teacher, d.teacher_img_size, "float32"
    params = load_weights(teacher_config, d.teacher_pdparams, d.teacher_checkpoint, "strict", 0)
    if params is None:
        raise ValueError("distill.teacher needs distill.teacher_pdparams or distill.teacher_checkpoint")
    teacher = build_model(teacher_config, train=False, num_devices=num_devices)
    params = jax.tree.map(jnp.asarray, params)
    return lambda images: teacher.apply({"params": params}, images)
