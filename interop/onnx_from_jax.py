"""ONNX straight from the JAX model, without Paddle: jax2onnx traces our Flax forward pass.

:func:`export_onnx_from_jax` writes one ``.onnx`` file whose graph is our model's own
computation (not the Paddle mirror's): input ``x``, NCHW float32 ``[N, 3, S, S]`` with a
symbolic batch ``N``, like the Paddle2ONNX export; output ``[N, num_classes]``, softmax
probabilities unless ``softmax=False``. The file's ``metadata_props`` say what it holds
(:data:`METADATA_KEYS`: model name, output kind, input size, eval transform, classes), so the
deploy predictors and the server need no side file. The model is checked with
``onnx.checker`` (full check, shapes inferred) before it is renamed into place: a failure
leaves no file behind.

Only the core and the ``onnx`` extra are needed (jax2onnx, onnx, onnxruntime); this module and
what it imports never import Paddle or TensorFlow (a test runs it in a subprocess and looks).

The converter is jax2onnx 0.11.2, the newest release whose requirements fit beside ours: every
later one requires ``onnx>=1.20.1`` (Paddle2ONNX 2.1, the newest, requires ``onnx<=1.17.0``), and
every one from 0.13.1 ``orbax-checkpoint<0.11.37`` (our checkpoints need ``>=0.12.8``). 0.11.2 cannot express
TNT with a symbolic batch: TNT folds the batch into its patches (``[16*N, ...]``) and 0.11.2's
``broadcast_in_dim`` and ``pad`` lowerings accept only dimensions it saw as inputs ("no origin
recorded for symbolic dim '4*N'"). So under jax2onnx < 0.12, TNT is exported as a loop over the
images of the batch (``lax.map``: an ONNX ``Loop`` whose body sees one image, static shapes);
DeiT always, and TNT under jax2onnx >= 0.12, as one batched graph. docs/deployment.md has the
measured cost of the loop. On JAX >= 0.12 (the Python 3.12 lock) jax2onnx 0.11's loop lowering
recurses forever (JAX 0.12's ``Jaxpr.jaxpr`` is the jaxpr itself), so there TNT is refused with
that reason; DeiT converts on both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from interop.errors import BackendUnavailable, InferenceModelError, first_line
from vitjax.files import atomic_file
from vitjax.weights.convert import Variables

INPUT_NAME = "x"
DEFAULT_OPSET = 21  # jax2onnx's default; jax2onnx 0.13 writes opset-18 ReduceMean inputs under opset 17
METADATA_KEYS = (
    "vitjax.model",
    "vitjax.output",
    "vitjax.img_size",
    "vitjax.num_classes",
    "vitjax.eval_transform",
    "vitjax.batch",
)


def require_jax2onnx():
    """The ``jax2onnx`` module, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        import jax2onnx
    except ImportError as e:
        raise BackendUnavailable(f"jax2onnx is not installed ({e}); pip install 'vitjax[onnx]'") from None
    return jax2onnx


def resolve_model_source(source, model_name: str | None) -> tuple[str, Variables]:
    """``(model_name, variables)`` from what the CLI takes: a registered model name (PaddleClas's
    pretrained weights, from the cache or downloaded), a ``.pdparams`` file, an orbax checkpoint or
    a training workdir (the last two with ``model_name``), or in-memory variables."""
    from interop.inference.export import resolve_variables
    from vitjax.models.registry import list_models

    if isinstance(source, str) and source in list_models(include_test=True) and not Path(source).exists():
        from vitjax.weights.pretrained import load_pretrained

        if model_name not in (None, source):
            raise InferenceModelError(f"{source}: pretrained weights of {source}, but --model says {model_name}")
        return source, load_pretrained(source)
    return resolve_variables(source, model_name)


def model_facts(variables: Variables, model_name: str) -> dict:
    """Input size (from the position embeddings), class count and eval transform of ``variables``."""
    import dataclasses

    from interop.inference.export import _position_embedding_img_size
    from vitjax.models.registry import get_spec
    from vitjax.weights.convert import infer_num_classes, variables_to_state_dict

    state = variables_to_state_dict(variables, model_name)
    img_size = _position_embedding_img_size(state, model_name)
    spec = get_spec(model_name)
    t = spec.eval_transform
    if img_size != t.crop_size:  # another resolution keeps the family's resize/crop ratio, as the server does
        t = dataclasses.replace(t, resize_short=round(t.resize_short * img_size / t.crop_size), crop_size=img_size)
    return {
        "model": model_name,
        "img_size": img_size,
        "num_classes": infer_num_classes(state),
        "eval_transform": dataclasses.asdict(t),
    }


def forward_nchw(
    variables: Variables, model_name: str, img_size: int, num_classes: int, softmax: bool, per_image: bool = False
):
    """The inference function: NCHW float32 images -> logits (or probabilities), XLA's matmuls.
    ``per_image``: the batch as a loop over single images (``lax.map``), same result."""
    import jax
    import jax.numpy as jnp

    from vitjax.models.registry import create_model

    model = create_model(model_name, num_classes=num_classes, img_size=img_size, matmul="xla")

    def forward(images_nchw):
        logits = model.apply(variables, jnp.transpose(images_nchw, (0, 2, 3, 1))).astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1) if softmax else logits

    if per_image:
        return lambda images_nchw: jax.lax.map(lambda image: forward(image[None])[0], images_nchw)
    return forward


def needs_per_image_loop(model_name: str) -> bool:
    """Whether the installed jax2onnx needs ``model_name`` exported as a loop over images (see above)."""
    from vitjax.models.registry import get_spec

    return get_spec(model_name).family == "tnt" and _version("jax2onnx") < (0, 12)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """jax2onnx logs every plugin module it cannot import (five ``jnp`` wrappers on JAX >= 0.10,
    whose ``lax`` primitives it converts anyway) and onnx_ir every untyped constant, as warnings."""
    loggers = [logging.getLogger(n) for n in ("jax2onnx", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # and its plugins' float64 examples, at import, without x64
            warnings.filterwarnings("ignore", message="Explicitly requested dtype float64", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _version(distribution: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version(distribution).split(".")[:2] if p.isdigit())


def _rename_input(model, old: str, new: str) -> None:
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def convert(forward, img_size: int, model_name: str, opset: int = DEFAULT_OPSET):
    """``forward`` (NCHW in) traced by jax2onnx with a symbolic batch ``N``: an ``onnx.ModelProto``."""
    jax2onnx = require_jax2onnx()
    with _quiet_converter():
        model = jax2onnx.to_onnx(forward, [("N", 3, img_size, img_size)], model_name=model_name, opset=opset)
    _rename_input(model, model.graph.input[0].name, INPUT_NAME)
    return model


def export_onnx_from_jax(
    source,
    out_path: str | os.PathLike,
    model_name: str | None = None,
    *,
    softmax: bool = True,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Writes ``out_path`` (see the module docstring) from any model source
    :func:`resolve_model_source` takes; returns its path. Raises :class:`InferenceModelError`
    (one line naming the file) when the target exists without ``overwrite``, its directory is
    missing, or jax2onnx cannot express the model; nothing is left behind then."""
    import onnx

    out = Path(out_path)
    if out.exists() and not overwrite:
        raise InferenceModelError(f"{out}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)")
    if not out.absolute().parent.is_dir():
        raise InferenceModelError(f"{out}: parent directory {out.absolute().parent} does not exist")
    name, variables = resolve_model_source(source, model_name)
    facts = model_facts(variables, name)
    require_jax2onnx()
    per_image = needs_per_image_loop(name)
    if per_image and _version("jax") >= (0, 12):
        # JAX 0.12's Jaxpr has a .jaxpr that is itself; jax2onnx 0.11's scan lowering walks it forever.
        raise InferenceModelError(
            f"{out}: jax2onnx {_version('jax2onnx')[0]}.{_version('jax2onnx')[1]} cannot express {name} on "
            f"JAX >= 0.12 (its loop lowering recurses on this JAX's jaxprs, and it cannot fold the batch into "
            f"TNT's patches); export TNT with JAX 0.10 (the Python 3.11 lock) or a jax2onnx >= 0.12"
        )
    forward = forward_nchw(variables, name, facts["img_size"], facts["num_classes"], softmax, per_image)
    try:
        model = convert(forward, facts["img_size"], name, opset)
    except BackendUnavailable:
        raise
    except Exception as e:  # jax2onnx raises NotImplementedError, ValueError, ... for what it cannot express
        raise InferenceModelError(f"{out}: jax2onnx cannot express {name} ({type(e).__name__}: {first_line(e)})") from e
    metadata = {
        "vitjax.model": name,
        "vitjax.output": "probabilities" if softmax else "logits",
        "vitjax.img_size": str(facts["img_size"]),
        "vitjax.num_classes": str(facts["num_classes"]),
        "vitjax.eval_transform": json.dumps(facts["eval_transform"]),
        "vitjax.batch": "per-image loop" if per_image else "batched",
    }
    onnx.helper.set_model_props(model, metadata)
    model.producer_name = "vitjax (jax2onnx)"
    with atomic_file(out) as tmp:
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise InferenceModelError(f"{out}: the converted model fails onnx.checker ({first_line(e)})") from None
    return out


def read_onnx_metadata(path: str | os.PathLike) -> Mapping[str, str]:
    """The ``vitjax.*`` metadata of an ONNX file (empty for files we did not write, e.g. Paddle2ONNX's)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InferenceModelError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("vitjax.")}
