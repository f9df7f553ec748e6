"""A portable JAX artifact: the model's inference function as serialized StableHLO (``jax.export``).

:func:`export_jax_artifact` writes two files:

* ``NAME.jaxexport``: ``jax.export`` of ``images (NHWC float32 [N, S, S, 3]) -> logits
  [N, num_classes]`` with a symbolic batch ``N``, the weights inside as constants, lowered for
  ``cpu``, ``cuda`` and ``tpu`` in one module (no preprocessing, no softmax);
* ``NAME.jaxexport.json``: the sidecar (:data:`SIDECAR_SUFFIX`): model name, input size, eval
  transform, class count, the platforms, the calling convention, and the JAX version that wrote it.

Both are written beside their targets and renamed into place, so a failure leaves neither.

:func:`load_jax_artifact` and :class:`JaxArtifact` run such a file with JAX alone. This half of
the module imports nothing from ``vitjax`` or ``interop`` (only the standard library, NumPy and
JAX): the artifact carries the whole computation, and a test runs it with ``vitjax.models``
made unimportable. The errors it raises are :class:`ArtifactError` (a ``ValueError``), one line
naming the file: a missing or malformed sidecar, a serialization outside this JAX's compatibility
window (naming the JAX that wrote it and this one), a platform the file was not lowered for, a
batch above the limit the file was written with.

JAX's promise (https://docs.jax.dev/en/latest/export/export.html#compatibility-guarantees): a
file serialized by one JAX loads in any JAX released within the following six months, and a JAX
loads files from up to six months before it. Outside that, ``jax.export.deserialize`` fails;
:func:`load_jax_artifact` says which versions were involved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ARTIFACT_SUFFIX = ".jaxexport"
SIDECAR_SUFFIX = ".json"  # appended: NAME.jaxexport.json
FORMAT = "vitjax-jax-export"
FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "tpu")


class ArtifactError(ValueError):
    """A JAX artifact that cannot be written, read or run here; the message is one line naming the file."""


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


# -- reading and running: JAX and NumPy only ------------------------------------------------------


def _current_platform() -> str:
    import jax

    backend = jax.default_backend()
    if backend == "gpu":
        version = getattr(jax.devices()[0].client, "platform_version", "").lower()
        return "rocm" if "rocm" in version else "cuda"
    return backend


class JaxArtifact:
    """A deserialized artifact: ``artifact(images_nhwc)`` returns logits as a NumPy array."""

    def __init__(self, path: Path, metadata: dict, exported):
        self.path, self.metadata, self.exported = Path(path), metadata, exported  # exported: jax.export.Exported
        self._jitted = None

    @property
    def model_name(self) -> str:
        return self.metadata["model"]

    @property
    def img_size(self) -> int:
        return int(self.metadata["img_size"])

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def max_batch(self) -> int | None:
        return self.metadata.get("max_batch")

    def check_platform(self, platform: str | None = None) -> str:
        platform = platform or _current_platform()
        if platform not in self.exported.platforms:
            raise ArtifactError(
                f"{self.path}: lowered for {', '.join(self.exported.platforms)}, not for this machine's {platform}"
            )
        return platform

    def __call__(self, images_nhwc) -> np.ndarray:
        images = np.asarray(images_nhwc, dtype=np.float32)
        s = self.img_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.shape[0] < 1:
            raise ArtifactError(f"{self.path}: input of shape {list(images.shape)}; the model takes [N, {s}, {s}, 3]")
        if self.max_batch is not None and images.shape[0] > self.max_batch:
            raise ArtifactError(
                f"{self.path}: batch of {images.shape[0]} exceeds the limit {self.max_batch} it was exported with"
            )
        self.check_platform()
        return np.asarray(self._call(images))

    @property
    def _call(self):
        if self._jitted is None:
            import jax

            self._jitted = jax.jit(self.exported.call)
        return self._jitted


def read_sidecar(path: str | os.PathLike) -> dict:
    """The sidecar of ``path`` (``path`` + ``.json``), checked for the fields a loader needs."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no sidecar {side.name} beside it (model name, input size, transform)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{side}: unreadable sidecar ({_first_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{side}: not a {FORMAT} sidecar")
    missing = [k for k in ("model", "img_size", "num_classes", "eval_transform", "jax_version") if k not in meta]
    if missing:
        raise ArtifactError(f"{side}: sidecar lacks {', '.join(missing)}")
    numbers = ("img_size", "num_classes", "format_version", "calling_convention_version", "max_batch")
    bad = [
        k for k in numbers if meta.get(k) is not None and (isinstance(meta[k], bool) or not isinstance(meta[k], int))
    ]
    if bad:
        raise ArtifactError(f"{side}: sidecar fields {', '.join(bad)} must be whole numbers")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{side}: sidecar format {meta['format_version']} is newer than this reader's")
    return meta


def load_jax_artifact(path: str | os.PathLike) -> JaxArtifact:
    """Deserializes ``path`` (see the module docstring for the errors)."""
    import jax
    from jax import export

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    meta = read_sidecar(path)
    writer = meta["jax_version"]
    ccv = meta.get("calling_convention_version")
    low, high = export.minimum_supported_calling_convention_version, export.maximum_supported_calling_convention_version
    if ccv is not None and not low <= int(ccv) <= high:
        raise ArtifactError(
            f"{path}: written by JAX {writer} (calling convention {ccv}); JAX {jax.__version__} reads "
            f"{low}..{high}: outside JAX's compatibility window, re-export it with JAX {jax.__version__}"
        )
    try:
        exported = export.deserialize(bytearray(path.read_bytes()))
    except Exception as e:  # flatbuffer, StableHLO version or MLIR parse errors
        raise ArtifactError(
            f"{path}: written by JAX {writer}, JAX {jax.__version__} cannot load it "
            f"(outside JAX's compatibility window?): {_first_line(e)}"
        ) from None
    return JaxArtifact(path, meta, exported)


# -- writing: needs the model -------------------------------------------------------------------------


def export_jax_artifact(
    source,
    out_path: str | os.PathLike,
    model_name: str | None = None,
    *,
    platforms: Sequence[str] = PLATFORMS,
    max_batch: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``out_path`` and its sidecar (see the module docstring) from any model source
    :func:`interop.onnx_from_jax.resolve_model_source` takes; returns ``out_path``.

    ``max_batch``: a limit the loader enforces (the compiled module itself takes any batch)."""
    from importlib.metadata import version

    import jax
    import jax.numpy as jnp
    from jax import export

    from interop.onnx_from_jax import forward_nchw, model_facts, resolve_model_source
    from vitjax.files import atomic_file

    out = Path(out_path)
    side = sidecar_path(out)
    if (out.exists() or side.exists()) and not overwrite:
        raise ArtifactError(f"{out}: already exists; refusing to overwrite (pass overwrite=True / --overwrite)")
    if not out.absolute().parent.is_dir():
        raise ArtifactError(f"{out}: parent directory {out.absolute().parent} does not exist")
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
        raise ArtifactError(f"{out}: platforms {list(platforms)}; choose from cpu, cuda, rocm, tpu")
    name, variables = resolve_model_source(source, model_name)
    facts = model_facts(variables, name)
    s = facts["img_size"]
    nchw = forward_nchw(variables, name, s, facts["num_classes"], softmax=False)

    def logits(images_nhwc):  # NHWC in, as the Flax model takes it
        return nchw(jnp.transpose(images_nhwc, (0, 3, 1, 2)))

    (batch,) = export.symbolic_shape("N")
    spec = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
    try:
        exported = export.export(jax.jit(logits), platforms=tuple(platforms))(spec)
        blob = exported.serialize()
    except Exception as e:
        raise ArtifactError(f"{out}: jax.export cannot export {name} ({type(e).__name__}: {_first_line(e)})") from e
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "img_size": s,
        "num_classes": facts["num_classes"],
        "eval_transform": facts["eval_transform"],
        "input": {"name": "images", "layout": "NHWC", "dtype": "float32", "shape": ["N", s, s, 3]},
        "output": "logits",
        "platforms": list(exported.platforms),
        "max_batch": max_batch,
        "jax_version": jax.__version__,
        "jaxlib_version": version("jaxlib"),
        "calling_convention_version": exported.calling_convention_version,
    }
    # The blob lands before its sidecar: a failure between the two never pairs a new sidecar with an old blob.
    with atomic_file(side) as tmp_side, atomic_file(out) as tmp_out:
        tmp_out.write_bytes(bytes(blob))
        tmp_side.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
