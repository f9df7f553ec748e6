"""Device mesh and parameter sharding rules (the pjit model: ``NamedSharding`` over a
``Mesh`` with a ``data`` and a ``model`` axis).

A parameter's ``PartitionSpec`` comes from rules, tried in order: the config's own
``sharding.rules`` (``(regex, spec)`` pairs matched against the ``/``-joined parameter
path), then the strategy's:

* ``dp``: every parameter replicated; the batch is split over ``data``.
* ``tp``: tensor parallel, Megatron-style: the first matmul of attention (``qkv``/``qk``/
  ``v``) and of the MLP (``fc1``) split their output features over ``model``, the second
  (attention ``proj``, ``fc2``) their input features, so each block needs one reduction.
* ``fsdp``: every parameter additionally split along its largest dimension divisible
  by the ``data`` axis (ZeRO-3 style); XLA gathers it where it is used.
* ``fsdp_tp``: both.

Optimizer state follows the parameter it belongs to; everything else is replicated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"

TENSOR_PARALLEL_RULES: tuple[tuple[str, tuple], ...] = (
    (r"(^|/)(attn[^/]*/(qkv|qk|v)|mlp[^/]*/fc1)/kernel$", (None, MODEL)),
    (r"(^|/)(attn[^/]*/(qkv|qk|v)|mlp[^/]*/fc1)/bias$", (MODEL,)),
    (r"(^|/)(attn[^/]*/proj|mlp[^/]*/fc2)/kernel$", (MODEL, None)),
)
STRATEGIES = ("dp", "tp", "fsdp", "fsdp_tp")


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``data`` x ``model`` mesh; ``data=-1`` takes every device the model axis leaves.
    A smaller mesh than the machine uses the first ``data * model`` devices."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"mesh.model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model if data == -1 else data
    if data < 1 or data * model > len(devices):
        raise ValueError(f"mesh {data}x{model} needs {data * model} devices; there are {len(devices)}")
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def _fit(spec: tuple, shape: tuple, mesh: Mesh) -> list:
    """``spec`` padded to the array's rank, dropping axes the dimension can't be split over."""
    spec = list(spec) + [None] * (len(shape) - len(spec))
    return [
        axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None for i, axis in enumerate(spec[: len(shape)])
    ]


def param_spec(path: str, shape: tuple, mesh: Mesh, strategy: str, extra_rules: Sequence = ()) -> P:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sharding.strategy {strategy!r}; expected one of {STRATEGIES}")
    rules = list(extra_rules) + (list(TENSOR_PARALLEL_RULES) if "tp" in strategy else [])
    spec: list = [None] * len(shape)
    for pattern, rule_spec in rules:
        if re.search(pattern, path):
            spec = _fit(tuple(rule_spec), shape, mesh)
            break
    if "fsdp" in strategy and DATA not in spec and mesh.shape[DATA] > 1:
        free = [i for i, axis in enumerate(spec) if axis is None and shape[i] % mesh.shape[DATA] == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = DATA
    return P(*spec)


def _dict_path(key_path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def param_specs(params: Any, mesh: Mesh, strategy: str, extra_rules: Sequence = ()) -> Any:
    """A tree of ``PartitionSpec`` for a (possibly abstract) parameter tree."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, leaf: param_spec("/".join(_dict_path(kp)), tuple(leaf.shape), mesh, strategy, extra_rules), params
    )


def state_shardings(
    abstract_state: Any, tx: optax.GradientTransformation, mesh: Mesh, strategy: str, extra_rules: Sequence = ()
) -> Any:
    """``NamedSharding`` for every leaf of a train state (``step``, ``params``, ``opt_state``).

    Each parameter gets its rule's sharding; optax says which optimizer-state leaves belong to
    which parameter (``optax.tree_map_params``: Adam's moments, momentum buffers, ...), and those
    share their parameter's sharding. Everything else (step counters) is replicated.
    """
    replicated = NamedSharding(mesh, P())
    params = jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        param_specs(abstract_state.params, mesh, strategy, extra_rules),
        is_leaf=lambda x: isinstance(x, P),
    )
    opt_state = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_state.opt_state, params, transform_non_params=lambda _: replicated
    )
    return abstract_state.replace(step=replicated, params=params, opt_state=opt_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))
