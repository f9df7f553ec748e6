"""Parity report: does every deployment backend compute what the JAX model computes?

:func:`run_parity` exports the model twice (the shipped model with softmax, and a
logits variant so logits can be compared directly), converts both to ONNX, and runs
the JAX model and every backend on the same inputs: a random batch and real photos
put through the model's eval transform. The Paddle-free backends (``onnxruntime-jax``,
``jax-export``) get their files from :mod:`interop.onnx_from_jax` and
:mod:`interop.jax_artifact`; a report on those alone exports no Paddle model. It records, per backend and input set, the
max abs difference of logits and of probabilities against JAX, top-1 and top-5
agreement, and latency at batch 1/4/8 on this machine; :func:`write_report` writes it
as markdown and JSON. A backend this machine cannot run is listed with the reason,
never replaced.

Tolerances (max abs difference against JAX): fp32 backends 1e-4 on logits and on
probabilities (softmax's Jacobian has infinity-norm <= 1/2, so a 1e-4 logit error
cannot move a probability by more); TensorRT fp16 a looser, documented bound
(:data:`TOLERANCES`): fp16 keeps 11 significant bits (relative rounding 4.9e-4 per
op), which compounds over a dozen transformer blocks.

int8 (backend ``onnxruntime-int8``, asked for by name: the jax2onnx files quantized by
:mod:`interop.quantize`, calibrated on ``calibration`` or else on the checked photos) is held to
its own line (:data:`INT8_TOLERANCE`), not to a logit bound: top-1 agreement with JAX and the
largest change in the probability of JAX's top-1 class, judged on the photos only (random
noise lies outside any calibration set; its numbers are reported, not judged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interop.deploy import BACKENDS, BackendUnavailable, Predictor, backend_status, create_predictor
from interop.inference import export_inference_model, export_onnx, resolve_variables
from interop.measure import call_times, latency_summary, versions


@dataclasses.dataclass(frozen=True)
class Tolerance:
    logits: float
    probs: float


@dataclasses.dataclass(frozen=True)
class Int8Tolerance:
    """int8 is judged on the photos: the fraction of them whose top-1 matches JAX's, and the largest
    change in the probability of JAX's top-1 class."""

    top1_agreement: float
    top1_prob_delta: float
    judged_inputs: tuple[str, ...] = ("photos",)


TOLERANCES = {"fp32": Tolerance(logits=1e-4, probs=1e-4), "fp16": Tolerance(logits=5e-2, probs=1e-2)}
INT8_TOLERANCE = Int8Tolerance(top1_agreement=0.75, top1_prob_delta=0.1)
INT8_BACKEND = "onnxruntime-int8"
LATENCY_BATCHES = (1, 4, 8)
PADDLE_FREE_BACKENDS = ("jax", "onnxruntime-jax", "jax-export", INT8_BACKEND)  # these alone export no Paddle model


def precision_of(backend: str) -> str:
    if backend == INT8_BACKEND:
        return "int8"
    return "fp16" if backend.endswith("fp16") else "fp32"


def _status(backend: str) -> tuple[bool, str]:
    if backend == INT8_BACKEND:
        ok, reason = backend_status("onnxruntime-jax")
        return ok, reason if not ok else "ONNX Runtime on the int8 (QDQ) jax2onnx file"
    return backend_status(backend)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def compare(
    reference_logits: np.ndarray, logits: np.ndarray, reference_probs: np.ndarray, probs: np.ndarray
) -> dict[str, float]:
    """Max abs differences, top-1/top-5 agreement (fraction of rows; top-5 as sets) and the largest
    change in the probability of the reference's top-1 class."""
    top5 = lambda x: np.sort(np.argsort(-x, axis=-1)[:, :5], axis=-1)  # noqa: E731
    top1 = reference_probs.argmax(-1)[:, None]
    return {
        "max_abs_logits": float(np.abs(logits - reference_logits).max()),
        "max_abs_probs": float(np.abs(probs - reference_probs).max()),
        "top1_agreement": float(np.mean(probs.argmax(-1) == reference_probs.argmax(-1))),
        "top5_agreement": float(np.mean(np.all(top5(probs) == top5(reference_probs), axis=-1))),
        "top1_prob_delta": float(np.abs(np.take_along_axis(probs - reference_probs, top1, axis=-1)).max()),
    }


def measure_latency(
    predictor: Predictor, images: np.ndarray, batches: Sequence[int], runs: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Per batch size: ``warmup`` untimed calls of ``predictor.predict``, then ``runs`` timed
    ones, summarised by :func:`interop.measure.latency_summary` (the benchmarks' timer and summary)."""
    table = {}
    for batch in batches:
        x = np.ascontiguousarray(images[:batch])
        call_times(lambda x=x: predictor.predict(x), warmup)
        table[str(batch)] = latency_summary(call_times(lambda x=x: predictor.predict(x), runs), batch)
    return table


def default_photos() -> list[tuple[str, np.ndarray]]:
    """A few real photographs (scikit-image's sample data, bundled with it: no download)."""
    try:
        from skimage import data
    except ImportError:
        return []
    return [(f"skimage.data.{n}", getattr(data, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket")]


def load_photos(paths: Sequence[str | os.PathLike]) -> list[tuple[str, np.ndarray]]:
    from vitjax.data.transforms import load_rgb

    return [(str(p), load_rgb(p)) for p in paths]


def photo_batch(photos: Sequence[tuple[str, np.ndarray]], model_name: str) -> np.ndarray:
    """Photos through the model's eval transform, as one NCHW float32 batch."""
    from vitjax.data.transforms import preprocess_eval
    from vitjax.models.registry import get_spec

    transform = get_spec(model_name).eval_transform
    return np.stack([preprocess_eval(image, transform).transpose(2, 0, 1) for _, image in photos]).astype(np.float32)


def run_parity(
    source,
    out_dir: str | os.PathLike,
    model_name: str | None = None,
    *,
    backends: Sequence[str] | None = None,
    photos: Sequence[tuple[str, np.ndarray]] | None = None,
    random_batch: int = 8,
    latency_batches: Sequence[int] = LATENCY_BATCHES,
    latency_runs: int = 10,
    threads: int = 1,
    tolerances: dict[str, Tolerance] | None = None,
    seed: int = 0,
    calibration: str | os.PathLike | None = None,
    int8_tolerance: Int8Tolerance = INT8_TOLERANCE,
) -> dict[str, Any]:
    """Runs the parity check and returns the report (see the module docstring).

    ``source``: Flax variables, a ``.pdparams`` file, an orbax checkpoint or a workdir.
    ``out_dir`` receives the exported models (``models/``); the report is written by
    :func:`write_report`. ``photos`` defaults to :func:`default_photos`. ``calibration``: the
    image folder ``onnxruntime-int8`` is calibrated on (default: the photos checked).
    """
    model_name, variables = resolve_variables(source, model_name)
    tolerances = {**TOLERANCES, **(tolerances or {})}
    backends = list(backends or BACKENDS)
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    shipped = logits_dir = None
    if any(b not in PADDLE_FREE_BACKENDS for b in backends):  # the Paddle inference models
        shipped = export_inference_model(
            variables, model_name, out_dir / "models" / "inference", softmax=True, overwrite=True
        )
        logits_dir = export_inference_model(
            variables, model_name, out_dir / "models" / "logits", softmax=False, overwrite=True
        )
    onnx_files: dict[str, dict[str, Path]] = {"onnxruntime": {}, "onnxruntime-jax": {}, INT8_BACKEND: {}}
    photos = default_photos() if photos is None else list(photos)
    if "onnxruntime" in backends and backend_status("onnxruntime")[0]:
        onnx_files["onnxruntime"] = {
            kind: export_onnx(d, overwrite=True) for kind, d in (("probs", shipped), ("logits", logits_dir))
        }
    jax2onnx_missing = None
    wants_jax2onnx = "onnxruntime-jax" in backends or INT8_BACKEND in backends
    if wants_jax2onnx and backend_status("onnxruntime-jax")[0]:
        from interop.onnx_from_jax import export_onnx_from_jax

        try:
            onnx_files["onnxruntime-jax"] = {
                kind: export_onnx_from_jax(
                    variables,
                    out_dir / "models" / f"jax2onnx_{kind}.onnx",
                    model_name,
                    softmax=kind == "probs",
                    overwrite=True,
                )
                for kind in ("probs", "logits")
            }
        except BackendUnavailable as e:
            jax2onnx_missing = str(e)
    calibrated_on = None
    if INT8_BACKEND in backends and onnx_files["onnxruntime-jax"]:
        onnx_files[INT8_BACKEND], calibrated_on = _int8_files(
            onnx_files["onnxruntime-jax"], out_dir / "models", calibration, photos
        )
    artifact = None
    if "jax-export" in backends:
        from interop.jax_artifact import export_jax_artifact

        artifact = export_jax_artifact(variables, out_dir / "models" / "model.jaxexport", model_name, overwrite=True)

    reference = create_predictor("jax", variables=variables, model_name=model_name, softmax=False)
    size = reference.img_size
    rows = max(random_batch, max(latency_batches))
    inputs = {"random": np.random.RandomState(seed).standard_normal((rows, 3, size, size)).astype(np.float32)}
    if photos:
        inputs["photos"] = photo_batch(photos, model_name)
    expected = {}
    for name, batch in inputs.items():
        logits = reference.predict(batch)
        expected[name] = (logits, _softmax(logits))

    results: dict[str, Any] = {}
    for backend in backends:
        ok, reason = _status(backend)
        if backend in ("onnxruntime-jax", INT8_BACKEND) and ok and jax2onnx_missing:
            ok, reason = False, jax2onnx_missing
        if not ok:
            results[backend] = {"available": False, "reason": reason}
            continue
        options = dict(variables=variables, model_name=model_name, threads=threads, max_batch=rows)
        try:
            predictors = {
                kind: create_predictor(
                    "onnxruntime-jax" if backend == INT8_BACKEND else backend,
                    softmax=kind == "probs",
                    model_dir=d,
                    onnx_path=onnx_files.get(backend, {}).get(kind),
                    artifact_path=artifact,
                    **options,
                )
                for kind, d in (("probs", shipped), ("logits", logits_dir))
            }
        except BackendUnavailable as e:
            results[backend] = {"available": False, "reason": str(e)}
            continue
        precision = precision_of(backend)
        tolerance = int8_tolerance if precision == "int8" else tolerances[precision]
        entry: dict[str, Any] = {
            "available": True,
            "precision": precision,
            "tolerance": dataclasses.asdict(tolerance),
            "inputs": {},
        }
        if precision == "int8":
            entry["calibration"] = calibrated_on
        trt = getattr(predictors["probs"], "tensorrt", None)
        if trt is not None:
            entry["settings"] = trt.describe()
        passed = True
        for name, batch in inputs.items():
            ref_logits, ref_probs = expected[name]
            metrics = compare(
                ref_logits, predictors["logits"].predict(batch), ref_probs, predictors["probs"].predict(batch)
            )
            metrics["passed"] = _within(metrics, tolerance, name)
            passed &= metrics["passed"] is not False
            entry["inputs"][name] = metrics
        entry["latency"] = measure_latency(predictors["probs"], inputs["random"], latency_batches, latency_runs)
        entry["passed"] = passed
        results[backend] = entry

    return {
        "model": model_name,
        "img_size": size,
        "shipped_model_dir": str(shipped) if shipped else None,
        "inputs": {
            "random": f"{rows} images, standard normal (seed {seed}), NCHW {size}x{size}",
            "photos": [name for name, _ in photos] if photos else "none",
        },
        "tolerances": {
            **{k: dataclasses.asdict(v) for k, v in tolerances.items()},
            **({"int8": dataclasses.asdict(int8_tolerance)} if INT8_BACKEND in backends else {}),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
        },
        "versions": versions(),
        "latency_runs": latency_runs,
        "backends": results,
        "passed": all(r.get("passed", True) for r in results.values()),
    }


def _within(metrics: dict[str, float], tolerance, inputs: str) -> bool | None:
    """Whether ``metrics`` meet ``tolerance``; None for an input set int8 is not judged on."""
    if isinstance(tolerance, Int8Tolerance):
        if inputs not in tolerance.judged_inputs:
            return None
        return (
            metrics["top1_agreement"] >= tolerance.top1_agreement
            and metrics["top1_prob_delta"] <= tolerance.top1_prob_delta
        )
    return metrics["max_abs_logits"] <= tolerance.logits and metrics["max_abs_probs"] <= tolerance.probs


def _int8_files(float_files: dict[str, Path], models: Path, calibration, photos) -> tuple[dict[str, Path], str]:
    """The jax2onnx files quantized to int8, calibrated on ``calibration`` or on the photos."""
    from PIL import Image

    from interop.quantize import quantize_onnx

    described = str(calibration) if calibration is not None else None
    if calibration is None:
        if not photos:
            raise ValueError(f"{INT8_BACKEND}: pass a calibration folder (no photos to calibrate on)")
        calibration = models / "int8_calibration"
        calibration.mkdir(exist_ok=True)
        for i, (_, image) in enumerate(photos):
            Image.fromarray(image).save(calibration / f"{i:04d}.png")
        described = f"the {len(photos)} checked photos"
    files = {
        kind: quantize_onnx(path, calibration, models / f"int8_{kind}.onnx", overwrite=True)
        for kind, path in float_files.items()
    }
    return files, described


def _tolerance_text(name: str, v: dict[str, Any]) -> str:
    if "top1_agreement" in v:
        return (
            f"{name}: top-1 agreement >= {v['top1_agreement']:.0%} and top-1 probability change <= "
            f"{v['top1_prob_delta']:g}, on {', '.join(v['judged_inputs'])}"
        )
    return f"{name}: logits {v['logits']:g}, probabilities {v['probs']:g}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page: accuracy table, latency table, unavailable backends."""
    lines = [
        f"# Parity report: {report['model']}",
        "",
        f"Overall: **{'PASS' if report['passed'] else 'FAIL'}**. Reference: the JAX model (fp32).",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, {report['machine']['threads']} inference thread(s).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Inputs: random = {report['inputs']['random']}; photos = {report['inputs']['photos']} (through the model's eval transform).",
        "Tolerances (max abs difference against JAX, int8 by agreement): "
        + "; ".join(_tolerance_text(k, v) for k, v in report["tolerances"].items())
        + ".",
        "",
        "## Outputs",
        "",
        "| backend | inputs | max abs logits | max abs probs | top-1 agree | top-5 agree | top-1 prob change | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, entry in report["backends"].items():
        if not entry["available"]:
            continue
        for name, m in entry["inputs"].items():
            lines.append(
                f"| {backend} | {name} | {m['max_abs_logits']:.3g} | {m['max_abs_probs']:.3g} | "
                f"{m['top1_agreement']:.0%} | {m['top5_agreement']:.0%} | {m['top1_prob_delta']:.3g} | "
                f"{_result(m['passed'])} |"
            )
    batches = next((list(e["latency"]) for e in report["backends"].values() if e["available"]), [])
    lines += ["", f"## Latency (median of {report['latency_runs']} runs, ms per batch)", ""]
    lines.append("| backend | " + " | ".join(f"batch {b}" for b in batches) + " |")
    lines.append("|---|" + "---|" * len(batches))
    for backend, entry in report["backends"].items():
        if entry["available"]:
            lines.append(
                f"| {backend} | " + " | ".join(f"{entry['latency'][b]['median_ms']:.2f}" for b in batches) + " |"
            )
    settings = [(b, e["settings"]) for b, e in report["backends"].items() if e.get("settings")]
    settings += [
        (b, f"calibrated on {e['calibration']}") for b, e in report["backends"].items() if e.get("calibration")
    ]
    if settings:
        lines += ["", "## Backend settings", ""] + [f"- {b}: {text}" for b, text in settings]
    unavailable = [(b, e["reason"]) for b, e in report["backends"].items() if not e["available"]]
    if unavailable:
        lines += ["", "## Not run on this machine", ""] + [f"- {b}: {reason}" for b, reason in unavailable]
    return "\n".join(lines) + "\n"


def _result(passed: bool | None) -> str:
    return "not judged" if passed is None else "ok" if passed else "**FAIL**"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``parity.md`` and ``parity.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "parity.md", out_dir / "parity.json"
    md.write_text(render_markdown(report))
    js.write_text(json.dumps(report, indent=2) + "\n")
    return md, js
