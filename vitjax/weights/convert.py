"""PaddleClas weights <-> Flax variables, through :mod:`vitjax.weights.mapping`'s table.

``load_pdparams``/``save_pdparams`` are the file-level entry points; the
``state_dict`` functions work on in-memory ``{key: ndarray}`` dicts (as read from a
``.pdparams`` file or an inference model's parameters).
"""

from __future__ import annotations

import functools
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from vitjax.models.posemb import POSITION_EMBEDDING_NAMES, resize_position_embeddings
from vitjax.models.registry import create_model, get_spec, list_models
from vitjax.weights.errors import WeightMismatchError
from vitjax.weights.mapping import KeyRule, is_head_key, key_table
from vitjax.weights.pdparams import read_pdparams, write_pdparams

HeadPolicy = Literal["strict", "reinit", "skip"]
Variables = dict[str, Any]


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatch_error(source: str, model_name: str, missing, unexpected, misshaped) -> WeightMismatchError:
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)}")
    if misshaped:
        parts.append("mis-shaped keys: " + _describe([f"{k} {got} (expected {want})" for k, got, want in misshaped]))
    return WeightMismatchError(f"{source}: does not fit {model_name}: " + "; ".join(parts))


def _expected_shapes(model_name: str, num_classes: int, img_size: int | None) -> dict[tuple[str, ...], tuple]:
    return dict(_expected_shapes_cached(model_name, num_classes, img_size))


@functools.lru_cache(maxsize=64)
def _expected_shapes_cached(model_name: str, num_classes: int, img_size: int | None) -> tuple:
    """Each parameter's shape, traced once per (model, classes, size): abstract evaluation, no compute."""
    model = create_model(model_name, num_classes=num_classes, img_size=img_size)
    size = model.arch.img_size
    images = jax.ShapeDtypeStruct((1, size, size, model.arch.in_chans), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    return tuple((path, tuple(leaf.shape)) for path, leaf in flatten_dict(shapes).items())


def _fresh_head(model_name: str, num_classes: int, img_size: int | None, seed: int) -> dict:
    """Head parameters initialised as PaddleClas does (truncated normal, zero bias)."""
    model = create_model(model_name, num_classes=num_classes, img_size=img_size)
    size = model.arch.img_size
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, model.arch.in_chans)))["params"]
    return {path: np.asarray(v) for path, v in flatten_dict(params).items() if path[0] in ("head", "head_dist")}


def infer_num_classes(state: Mapping[str, np.ndarray]) -> int:
    head = state.get("head.weight")
    return int(head.shape[1]) if head is not None and head.ndim == 2 else 0


def state_dict_to_variables(
    state: Mapping[str, np.ndarray],
    model_name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    head: HeadPolicy = "strict",
    seed: int = 0,
    source: str = "state dict",
) -> Variables:
    """Maps a PaddleClas ``state_dict`` onto ``create_model(model_name, ...)``'s variables.

    ``num_classes`` defaults to the checkpoint's. A different ``num_classes`` needs
    ``head="reinit"`` (a fresh head, seeded by ``seed``) or ``head="skip"`` (no head
    parameters returned; merge your own). A different ``img_size`` resizes the
    position embeddings. Any other mismatch raises :class:`WeightMismatchError` listing
    every missing, unexpected and mis-shaped key.
    """
    file_classes = infer_num_classes(state)
    num_classes = file_classes if num_classes is None else num_classes
    spec = get_spec(model_name)
    expected = _expected_shapes(model_name, num_classes, img_size)
    table = key_table(model_name, has_head=num_classes > 0)
    known = {rule.paddle_key for rule in key_table(model_name, has_head=True)}
    missing = [r.paddle_key for r in table if r.paddle_key not in state]
    if head != "strict":
        missing = [k for k in missing if not is_head_key(k)]
    unexpected = [k for k in state if k not in known]
    misshaped, flat = [], {}
    head_mismatch = False
    for rule in table:
        if rule.paddle_key not in state:
            continue
        raw = np.asarray(state[rule.paddle_key])
        want = expected[rule.flax_path]
        if raw.dtype.kind != "f":
            raise WeightMismatchError(
                f"{source}: {rule.paddle_key} holds {raw.dtype} values; parameters are floating point"
            )
        try:
            array = rule.to_flax(raw.astype(np.float32, copy=False))
        except ValueError:
            misshaped.append((rule.paddle_key, raw.shape, want))
            continue
        if array.shape != want and rule.paddle_key in POSITION_EMBEDDING_NAMES and array.ndim == 3:
            grid = math.isqrt(want[1] - spec.arch.num_prefix_tokens)
            try:
                array = resize_position_embeddings(array, spec.arch.num_prefix_tokens, grid)
            except ValueError:
                pass
        if array.shape != want:
            if is_head_key(rule.paddle_key) and head != "strict":
                head_mismatch = True
                continue
            misshaped.append((rule.paddle_key, array.shape, want))
            continue
        if is_head_key(rule.paddle_key) and head == "skip":
            continue
        flat[rule.flax_path] = array
    if missing or unexpected or misshaped:
        error = _mismatch_error(source, model_name, missing, unexpected, misshaped)
        if any(is_head_key(k) for k, _, _ in misshaped):
            error = WeightMismatchError(f"{error} (to fine-tune with a new head, pass head='reinit' or head='skip')")
        raise error
    if head == "reinit" and (head_mismatch or num_classes != file_classes or not any(p[0] == "head" for p in flat)):
        flat.update(_fresh_head(model_name, num_classes, img_size, seed))
    return {"params": unflatten_dict(flat)}


def variables_to_state_dict(variables: Variables, model_name: str) -> OrderedDict[str, np.ndarray]:
    """PaddleClas's ``state_dict`` (same keys, order, layouts) for our variables."""
    params = variables.get("params", variables)
    flat = {path: np.asarray(v) for path, v in flatten_dict(_unfreeze(params)).items()}
    has_head = ("head", "kernel") in flat
    table: list[KeyRule] = key_table(model_name, has_head=has_head)
    wanted = {rule.flax_path for rule in table}
    missing = [".".join(r.flax_path) for r in table if r.flax_path not in flat]
    unexpected = [".".join(p) for p in flat if p not in wanted]
    if missing or unexpected:
        raise _mismatch_error("variables", model_name, missing, unexpected, [])
    return OrderedDict((rule.paddle_key, rule.to_paddle(flat[rule.flax_path])) for rule in table)


def _unfreeze(tree):
    return {k: _unfreeze(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def load_pdparams(path: str | os.PathLike, model_name: str, **kwargs) -> Variables:
    """Reads a PaddleClas ``.pdparams`` file into Flax variables for ``model_name``.

    Keyword arguments are those of :func:`state_dict_to_variables`. The file is
    parsed by a restricted unpickler: it can hold arrays and nothing else.
    """
    state = read_pdparams(path)
    return state_dict_to_variables(state, model_name, source=str(path), **kwargs)


def save_pdparams(variables: Variables, model_name: str, path: str | os.PathLike) -> None:
    """Writes Flax variables as a ``.pdparams`` file PaddleClas loads strictly."""
    write_pdparams(variables_to_state_dict(variables, model_name), path)


def _flax_shape(rule: KeyRule, array: np.ndarray) -> tuple[int, ...] | None:
    """The array's shape in Flax's layout, or None where it cannot be laid out so."""
    try:
        return tuple(rule.to_flax(np.asarray(array)).shape)
    except ValueError:
        return None


def guess_model(state: Mapping[str, np.ndarray], source: str = "state dict") -> str:
    """The registered model whose PaddleClas keys and shapes ``state`` has exactly.

    Raises :class:`WeightMismatchError` when no model (or more than one) fits.
    """
    has_head = "head.weight" in state
    num_classes = infer_num_classes(state)
    fits = []
    for name in list_models(include_test=True):
        table = key_table(name, has_head=has_head)
        if [r.paddle_key for r in table] != list(state) and {r.paddle_key for r in table} != set(state):
            continue
        expected = _expected_shapes(name, num_classes, None)
        if all(_flax_shape(rule, state[rule.paddle_key]) == expected[rule.flax_path] for rule in table):
            fits.append(name)
    if len(fits) != 1:
        problem = "matches no registered model" if not fits else f"matches several models ({', '.join(fits)})"
        raise WeightMismatchError(f"{source}: {problem}; pass the model name explicitly")
    return fits[0]
