"""int8 (``interop quantize``) against fp32 ONNX in ONNX Runtime on the CPU: speed, and accuracy where it means something.

    python -m benchmarks.onnx_int8                         # the recorded run (a few minutes on 2 cores)
    python -m benchmarks.onnx_int8 --models DeiT_tiny_patch16_224 --rounds 1 --skip-choices

Speed, per model (random weights, seed 0: speed does not depend on them): the ONNX file from
``--source`` (``paddle``: Paddle2ONNX, the default, which is what quantizes TNT: jax2onnx 0.11 writes
TNT as a per-image ``Loop`` and ONNX Runtime's static quantizer does not enter loop bodies;
``jax``: jax2onnx), logits out, and its int8 version from :func:`interop.quantize.quantize_onnx`
(the shipped settings) calibrated on ``--calib-images`` photos. Both files get the same session
settings (``ORT_ENABLE_ALL``, sequential, ``--threads`` intra-op threads, one inter-op thread);
calls are interleaved (each round times both files at each batch in turn, ``--runs`` calls after 2
warm-up calls) and the table gives the median over all rounds. Also recorded: the op types ONNX
Runtime ran for each file after its graph optimizations (which int8 kernels it fused).

Accuracy: the quick start's digits model (``python -m vitjax.main --workdir DIR``, DeiT_test_patch8_32
on scikit-learn's digits; trained first when ``--digits-workdir`` has no checkpoint), exported both
ways (jax2onnx and Paddle2ONNX), quantized with calibration on the first ``--digits-calib`` images
of the digits *train* split (written as PNGs, in the split's order), then evaluated on the held-out
20% (360 images) through the model's eval transform: top-1 of fp32 and int8, and their top-1
agreement. ``choices``: the same measurement for each alternative to a shipped setting (one change
at a time), the evidence for what stays float.

Writes ``<out>/onnx_int8.{json,md}``. The CPU's int8 instructions (``avx512_vnni``, ``avx_vnni``,
``amx_int8`` in ``/proc/cpuinfo``) are recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.machine import busy_processes, describe, load_average
from benchmarks.onnx_from_jax import optimized_ops, session
from interop.measure import VERSIONED_PACKAGES, call_times, versions, write_results

DIGITS_MODEL = "DeiT_test_patch8_32"
SPEED_MODELS = ["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "DeiT_base_patch16_224", "TNT_small"]


def int8_flags() -> dict[str, bool]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")}


def choices():
    """(label, settings): the shipped settings, then one change at a time."""
    from interop.quantize import QuantizeSettings

    base = QuantizeSettings()
    ort_default = (  # quantize_static's default op set (QLinearOps + QDQ registries) that our graphs contain
        "MatMul", "Gemm", "Conv", "Add", "Mul", "Softmax", "Reshape", "Transpose", "Concat", "Gather",
        "Slice", "Squeeze", "Unsqueeze", "Split", "Where", "Clip", "Relu", "Sigmoid", "Pad", "Resize",
    )  # fmt: skip
    reshapes = ("Reshape", "Transpose", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze")
    return [
        ("shipped: MatMul/Gemm/Conv, per-channel int8 weights, uint8 act., float outputs, QDQ", base),
        ("outputs re-quantized to uint8", dataclasses.replace(base, float_outputs=False)),
        ("attention's activation x activation MatMuls float", dataclasses.replace(base, attention_float=True)),
        ("+ Add (residuals, LayerNorm's eps and bias)", dataclasses.replace(base, op_types=(*base.op_types, "Add"))),
        ("+ Mul (LayerNorm's scale, GELU's halves)", dataclasses.replace(base, op_types=(*base.op_types, "Mul"))),
        ("+ Softmax", dataclasses.replace(base, op_types=(*base.op_types, "Softmax"))),
        ("+ Reshape/Transpose/Concat/Gather/Slice", dataclasses.replace(base, op_types=(*base.op_types, *reshapes))),
        ("quantize_static's default op set", dataclasses.replace(base, op_types=ort_default)),
        ("per-tensor weights", dataclasses.replace(base, per_channel=False)),
        ("int8 activations", dataclasses.replace(base, activations="int8")),
        ("QOperator format", dataclasses.replace(base, quant_format="QOperator")),
        ("no quant_pre_process", dataclasses.replace(base, preprocess=False)),
    ]


def digits_workdir(path: Path) -> Path:
    if not (path / "checkpoints").is_dir() or not any((path / "checkpoints").iterdir()):
        print(f"training the digits model into {path} (python -m vitjax.main)", flush=True)
        subprocess.run([sys.executable, "-m", "vitjax.main", "--workdir", str(path)], check=True)
    return path


def digits_files(workdir: Path, tmp: Path) -> dict[str, Path]:
    from interop.inference import export_inference_model, export_onnx
    from interop.onnx_from_jax import export_onnx_from_jax

    paddle_dir = export_inference_model(workdir, DIGITS_MODEL, tmp / "digits_paddle", softmax=False, overwrite=True)
    return {
        "jax2onnx": export_onnx_from_jax(workdir, tmp / "digits_jax2onnx.onnx", DIGITS_MODEL, softmax=False),
        "Paddle2ONNX": export_onnx(paddle_dir, tmp / "digits_paddle2onnx.onnx", overwrite=True),
    }


def digits_accuracy(args, tmp: Path) -> dict:
    from PIL import Image

    import vitjax
    from interop.quantize import QuantizeSettings, op_counts, quantize_onnx
    from vitjax.data.sources import DigitsSource
    from vitjax.data.transforms import preprocess_eval

    workdir = digits_workdir(Path(args.digits_workdir))
    calib = tmp / "digits_calibration"
    calib.mkdir()
    train = DigitsSource("train")
    for i in range(args.digits_calib):
        Image.fromarray(train.images[i]).save(calib / f"{i:04d}.png")
    val = DigitsSource("validation")
    t = vitjax.get_spec(DIGITS_MODEL).eval_transform
    x = np.stack([preprocess_eval(im, t).transpose(2, 0, 1) for im in val.images]).astype(np.float32)
    files = digits_files(workdir, tmp)
    variants = [("shipped", QuantizeSettings())] if args.skip_choices else choices()
    result = {"workdir": str(workdir), "held_out": len(val), "calibration_images": args.digits_calib, "files": {}}
    for label, path in files.items():
        fp32 = session(path, args.threads).run(None, {"x": x})[0].argmax(-1)
        entry = {"fp32_top1": float(np.mean(fp32 == val.labels)), "int8": {}}
        for name, settings in variants:
            out = tmp / f"digits_{label}.int8.onnx"
            try:
                quantize_onnx(path, calib, out, model_name=DIGITS_MODEL, settings=settings, overwrite=True)
            except Exception as e:  # an alternative ORT cannot run is a finding, not a crash
                entry["int8"][name] = {"error": str(e).split("(", 1)[-1].rstrip(")")}
                continue
            int8 = session(out, args.threads).run(None, {"x": x})[0].argmax(-1)
            ops = op_counts(out)
            entry["int8"][name] = {
                "top1": float(np.mean(int8 == val.labels)),
                "agreement": float(np.mean(int8 == fp32)),
                "quantize_nodes": ops.get("QuantizeLinear", 0) + ops.get("QLinearMatMul", 0),
            }
        result["files"][label] = entry
        print("digits", label, json.dumps(entry), flush=True)
    return result


def speed(args, name: str, tmp: Path, calib: Path) -> dict:
    import jax

    import vitjax
    from interop.inference import export_inference_model, export_onnx
    from interop.onnx_from_jax import export_onnx_from_jax
    from interop.quantize import quantize_onnx

    size = vitjax.get_spec(name).img_size
    variables = jax.jit(vitjax.create_model(name).init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    if args.source == "jax":
        fp32 = export_onnx_from_jax(variables, tmp / f"{name}.onnx", name, softmax=False, overwrite=True)
    else:
        model_dir = export_inference_model(variables, name, tmp / f"{name}_paddle", softmax=False, overwrite=True)
        fp32 = export_onnx(model_dir, tmp / f"{name}.onnx", overwrite=True)
    int8 = quantize_onnx(fp32, calib, tmp / f"{name}.int8.onnx", model_name=name, overwrite=True)
    files = {"fp32": fp32, "int8": int8}
    sessions = {label: session(path, args.threads) for label, path in files.items()}
    x = np.random.RandomState(1).standard_normal((max(args.batches), 3, size, size)).astype(np.float32)
    outs = {label: s.run(None, {"x": x})[0] for label, s in sessions.items()}
    entry = {
        "source": "jax2onnx" if args.source == "jax" else "Paddle2ONNX",
        "files": {
            label: {"mbytes": files[label].stat().st_size / 1e6, "optimized_ops": optimized_ops(path, args.threads)}
            for label, path in files.items()
        },
        "random_input_top1_agreement": float(np.mean(outs["fp32"].argmax(-1) == outs["int8"].argmax(-1))),
        "latency_ms": {},
    }
    times = {(label, b): [] for label in sessions for b in args.batches}
    for _ in range(args.rounds):
        for b in args.batches:
            for label, s in sessions.items():
                feed = {"x": np.ascontiguousarray(x[:b])}
                call_times(lambda s=s, feed=feed: s.run(None, feed), 2)
                times[label, b] += call_times(lambda s=s, feed=feed: s.run(None, feed), args.runs)
    for (label, b), ts in times.items():
        median = statistics.median(ts)
        entry["latency_ms"].setdefault(label, {})[str(b)] = {
            "median_ms": median * 1e3,
            "min_ms": min(ts) * 1e3,
            "images_per_s": b / median,
            "calls": len(ts),
        }
    print(name, json.dumps(entry["latency_ms"]), flush=True)
    return entry


def photo_folder(folder: Path, count: int) -> Path:
    """``count`` calibration photos: scikit-image's bundled colour photos, and crops of them."""
    from PIL import Image
    from skimage import data

    folder.mkdir()
    photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    for i in range(count):
        image = photos[i % len(photos)]
        h, w = image.shape[:2]
        k = i // len(photos)
        crop = image[k * h // 16 : h - k * h // 32, k * w // 32 : w - k * w // 16]
        Image.fromarray(crop).save(folder / f"{i:03d}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=SPEED_MODELS)
    parser.add_argument("--source", choices=["paddle", "jax"], default="paddle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=4, help="timed calls per file, batch and round")
    parser.add_argument("--calib-images", type=int, default=8, help="photos calibrating the speed models")
    parser.add_argument("--digits-workdir", default="runs/digits", help="trained here first when it has no checkpoint")
    parser.add_argument("--digits-calib", type=int, default=128, help="digits train images to calibrate on")
    parser.add_argument("--skip-choices", action="store_true", help="digits: only the shipped settings")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="onnx-int8-") as name:
        tmp = Path(name)
        accuracy = digits_accuracy(args, tmp)
        calib = photo_folder(tmp / "photos", args.calib_images)
        results = {model: speed(args, model, tmp, calib) for model in args.models}

    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.onnx_int8 " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**describe(measure_clock=False), "int8_flags": int8_flags()},
        "load_average_at_end": load_average(),
        "busy_processes_at_end": busy_processes(),
        "threads": args.threads,
        "versions": versions((*VERSIONED_PACKAGES, "onnx", "jax2onnx")),
        "accuracy": accuracy,
        "speed": results,
    }
    print(f"wrote {write_results(args.out, 'onnx_int8', report, render(report))}")
    return 0


def render(report: dict) -> str:
    m = report["machine"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in m["int8_flags"].items())
    lines = [
        "# int8 (static, QDQ) vs fp32 ONNX in ONNX Runtime on the CPU",
        "",
        f"`{report['command'].strip()}`, {report['date']}. CPU: {m['cpu']} ({m['cores']} cores, {m['isa']}; "
        f"{flags}); ONNX Runtime CPU provider, {report['threads']} intra-op thread(s), ORT_ENABLE_ALL, same "
        f"settings for both files. Load average at the end: {report['load_average_at_end']:.2f}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "## Speed (random weights; median ms per batch, images/s in brackets)",
        "",
    ]
    speed = report["speed"]
    if speed:
        batches = list(next(iter(speed.values()))["latency_ms"]["fp32"])
        head = " | ".join(f"batch {b} fp32 | batch {b} int8 | speed-up" for b in batches)
        lines += [f"| model (file) | {head} | MB fp32 / int8 |", "|---|" + "---|" * (3 * len(batches) + 1)]
        for name, e in speed.items():
            cells = []
            for b in batches:
                f, i = e["latency_ms"]["fp32"][b], e["latency_ms"]["int8"][b]
                cells += [
                    f"{f['median_ms']:.1f} ({f['images_per_s']:.1f})",
                    f"{i['median_ms']:.1f} ({i['images_per_s']:.1f})",
                    f"{f['median_ms'] / i['median_ms']:.2f}x",
                ]
            size = f"{e['files']['fp32']['mbytes']:.0f} / {e['files']['int8']['mbytes']:.0f}"
            lines.append(f"| {name} ({e['source']}) | " + " | ".join(cells) + f" | {size} |")
        lines += ["", "What ONNX Runtime ran for the int8 files (op types after its optimizations):", ""]
        for name, e in speed.items():
            ops = ", ".join(f"{op} {n}" for op, n in e["files"]["int8"]["optimized_ops"].items())
            lines.append(f"- {name}: {ops}")
    acc = report["accuracy"]
    lines += [
        "",
        f"## Accuracy: the digits model ({DIGITS_MODEL}, `{acc['workdir']}`), {acc['held_out']} held-out images",
        "",
        f"Calibrated on the first {acc['calibration_images']} images of the train split.",
        "",
        "| file | settings | fp32 top-1 | int8 top-1 | top-1 agreement |",
        "|---|---|---|---|---|",
    ]
    for label, e in acc["files"].items():
        for name, r in e["int8"].items():
            if "error" in r:
                lines.append(f"| {label} | {name} | {e['fp32_top1']:.2%} | fails: {r['error']} | |")
            else:
                lines.append(f"| {label} | {name} | {e['fp32_top1']:.2%} | {r['top1']:.2%} | {r['agreement']:.2%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
