"""Recovering PaddleClas's structured keys from an inference model's internal parameter names.

An inference model stores its parameters under Paddle's internal names (``linear_8.w_0``,
``layer_norm_3.b_0``, ``tnt_0.w_1`` ...), not PaddleClas's structured keys. The keys come
from the ``.pdiparams.info`` file when there is one (Paddle 2.x ``jit.save`` writes the
structured names there: :func:`structured_state_from_info`); otherwise from the internal
names themselves (:func:`structured_state_by_order`): the number in ``linear_8`` counts
layers of that type in creation order, which is the order of
:func:`vitjax.weights.mapping.key_table`, and every parameter's shape must match.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from interop.errors import InferenceModelError, LayerOrderMismatch
from interop.inference.pdiparams import read_structured_names
from vitjax.models.registry import create_model
from vitjax.weights.mapping import KeyRule, key_table

_INTERNAL_NAME = re.compile(r"^(?P<layer>.+)_(?P<index>\d+)\.(?P<role>[wb])_(?P<slot>\d+)$")
_LAYER_TYPES = ("linear", "layer_norm", "conv2d")  # Paddle's unique-name prefixes for nn.Linear/LayerNorm/Conv2D


def _layer_type(rule: KeyRule, rules_by_module: dict[str, list[KeyRule]]) -> str:
    """Which Paddle layer type owns a key-table entry ("own" for the model's own parameters)."""
    if "." not in rule.paddle_key:
        return "own"
    leaves = {r.flax_path[-1] for r in rules_by_module[rule.paddle_key.rsplit(".", 1)[0]]}
    kinds = {r.kind for r in rules_by_module[rule.paddle_key.rsplit(".", 1)[0]]}
    return "conv2d" if "conv" in kinds else "layer_norm" if "scale" in leaves else "linear"


@functools.cache
def _paddle_shapes(model_name: str, num_classes: int, img_size: int) -> dict[str, tuple[int, ...]]:
    """PaddleClas key -> the shape Paddle stores it in, for one configuration of a model."""
    model = create_model(model_name, num_classes=num_classes, img_size=img_size)
    images = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    shapes = {}
    for rule in key_table(model_name, has_head=num_classes > 0):
        leaf = params
        for part in rule.flax_path:
            leaf = leaf[part]
        shapes[rule.paddle_key] = rule.to_paddle(np.empty(leaf.shape, np.uint8)).shape
    return shapes


def _units_by_creation(parameters: Mapping[str, np.ndarray]) -> dict[str, list[dict[str, str]]]:
    """Internal parameters grouped into layers, per layer type, in creation order.

    ``linear_8.w_0`` and ``linear_8.b_0`` are one layer; the model's own parameters
    (``tnt_0.w_1``, ``create_parameter_3.w_0``) are one unit each.
    """
    layers: dict[str, dict[tuple, dict[str, str]]] = {}
    for name in parameters:
        match = _INTERNAL_NAME.match(name)
        if match is None:
            raise InferenceModelError(
                f"parameter {name!r} has no Paddle-generated name; cannot tell which layer it belongs to"
            )
        layer, index, role, slot = match["layer"], int(match["index"]), match["role"], int(match["slot"])
        if layer in _LAYER_TYPES:
            layers.setdefault(layer, {}).setdefault((index,), {})[role] = name
        else:
            layers.setdefault("own", {})[(index, slot, layer)] = {"w": name}
    return {kind: [units[k] for k in sorted(units)] for kind, units in layers.items()}


def _units_by_table(model_name: str, has_head: bool) -> dict[str, list[dict[str, str]]]:
    """The key table's entries grouped like :func:`_units_by_creation` groups a file's parameters."""
    table = key_table(model_name, has_head=has_head)
    by_module: dict[str, list[KeyRule]] = {}
    for rule in table:
        by_module.setdefault(
            rule.paddle_key.rsplit(".", 1)[0] if "." in rule.paddle_key else rule.paddle_key, []
        ).append(rule)
    units: dict[str, dict[str, dict[str, str]]] = {}
    for rule in table:
        kind = _layer_type(rule, by_module)
        if kind == "own":
            units.setdefault(kind, {})[rule.paddle_key] = {"w": rule.paddle_key}
        else:
            module, leaf = rule.paddle_key.rsplit(".", 1)
            units.setdefault(kind, {}).setdefault(module, {})["w" if leaf == "weight" else "b"] = rule.paddle_key
    return {kind: list(mods.values()) for kind, mods in units.items()}


def structured_state_by_order(
    parameters: Mapping[str, np.ndarray], model_name: str, img_size: int
) -> dict[str, np.ndarray]:
    """Maps internal names to ``model_name``'s PaddleClas keys by layer creation order and shape.

    Returns the state dict in key-table order. Layers of one type are matched in order;
    the model's own parameters (tokens, position embeddings) are matched by shape, ties
    in creation order. Raises :class:`~interop.errors.LayerOrderMismatch` with a one-line
    reason when the parameters do not fit ``model_name``, and
    :class:`~interop.errors.InferenceModelError` for a parameter whose name Paddle did not
    generate.
    """
    found = _units_by_creation(parameters)
    linears = found.get("linear", [])
    num_classes = parameters[linears[-1]["w"]].shape[-1] if linears and "w" in linears[-1] else 0
    shapes = _paddle_shapes(model_name, int(num_classes), img_size)
    wanted = _units_by_table(model_name, has_head=num_classes > 0)
    if set(found) != set(wanted):
        raise LayerOrderMismatch(f"layer types {sorted(found)} != {sorted(wanted)}")
    state: dict[str, np.ndarray] = {}
    for kind, table_units in wanted.items():
        file_units = found[kind]
        if len(file_units) != len(table_units):
            what = "own parameters" if kind == "own" else f"{kind} layers"
            raise LayerOrderMismatch(f"{len(file_units)} {what}, {model_name} has {len(table_units)}")
        if kind != "own":
            for file_unit, table_unit in zip(file_units, table_units):
                if set(file_unit) != set(table_unit):
                    raise LayerOrderMismatch(f"{file_unit} vs {table_unit}: bias present on one side only")
                for role, key in table_unit.items():
                    array = parameters[file_unit[role]]
                    if tuple(array.shape) != shapes[key]:
                        raise LayerOrderMismatch(
                            f"{file_unit[role]} {list(array.shape)} cannot be {key} {list(shapes[key])}"
                        )
                    state[key] = array
            continue
        free = [unit["w"] for unit in file_units]
        for unit in table_units:
            key = unit["w"]
            fits = [name for name in free if tuple(parameters[name].shape) == shapes[key]]
            if not fits:
                raise LayerOrderMismatch(f"no parameter of shape {list(shapes[key])} for {key}")
            free.remove(fits[0])
            state[key] = parameters[fits[0]]
    return {rule.paddle_key: state[rule.paddle_key] for rule in key_table(model_name, has_head=num_classes > 0)}


def _strip_common_prefix(names: list[str]) -> list[str]:
    """``base_model.blocks.0...`` -> ``blocks.0...``: drops the export wrapper's attribute name."""
    parts = [n.split(".") for n in names]
    depth = 0
    while all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return [".".join(p[depth:]) for p in parts]


def structured_state_from_info(parameters: Mapping[str, np.ndarray], info: Path) -> dict[str, np.ndarray]:
    """The parameters under the structured names ``info`` records (the export wrapper's prefix dropped)."""
    names = read_structured_names(info)
    missing = [n for n in parameters if n not in names]
    if missing:
        raise InferenceModelError(f"{info}: no structured name for {', '.join(missing[:5])}")
    keys = _strip_common_prefix([names[n] for n in parameters])
    return dict(zip(keys, parameters.values()))
