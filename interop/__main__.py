"""``python -m interop``: move weights between PaddleClas and vitjax from the shell.

inspect  FILE.pdparams                      which model a file holds, and its shapes
convert  SRC DST [--model NAME] [...]       .pdparams -> orbax variables dir, or
                                            orbax dir / training workdir -> .pdparams,
                                            or .pdparams -> .pdparams (new head/resolution)
verify   FILE.pdparams [--model NAME]       our logits vs the Paddle mirror's on random images
export   SRC OUT_DIR [--model NAME]         write a Paddle inference model (PIR or --format legacy;
                                            --logits drops the softmax; --onnx adds inference.onnx)
import   MODEL_DIR DST [--model NAME]       inference model dir -> orbax variables dir or .pdparams
onnx     MODEL_DIR [OUT.onnx]               Paddle2ONNX conversion of an exported (PIR) dir
onnx --from jax SRC OUT.onnx [--model NAME] ONNX from the JAX model with jax2onnx, no Paddle (SRC: a
                                            registered name for its pretrained weights, .pdparams,
                                            orbax checkpoint or workdir; --logits drops the softmax)
quantize MODEL.onnx --calibration DIR --out MODEL.int8.onnx
                                            static int8 (QDQ) with ONNX Runtime's tools, calibrated on
                                            the images in DIR (--max-images N, --model for Paddle2ONNX)
jax-export SRC OUT.jaxexport [--model NAME] jax.export artifact (StableHLO for cpu, cuda, tpu; symbolic
                                            batch; NHWC in, logits out) + OUT.jaxexport.json sidecar
backends                                    which deployment backends run on this machine
parity   SRC --out DIR [--model NAME]       JAX vs every backend: parity.md + parity.json, exit 1 on failure
                                            (--backends ... onnxruntime-int8 [--calibration DIR]: int8 too)
download NAME... [--inference]             PaddleClas's pretrained weights (or *_infer.tar) into the cache
list-pretrained                             names, URLs, sizes, and what is cached
serve    SRC [--backend B] [--port 8080]    HTTP inference server (interop/serving; the serve extra)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interop._paddle import require_paddle
from interop.errors import InteropError
from interop.jax_artifact import ArtifactError
from interop.pretrained import add_commands as add_pretrained_commands
from vitjax.data.transforms import ImageError
from vitjax.training.checkpoints import CheckpointError, load_variables, save_variables
from vitjax.weights.convert import guess_model, infer_num_classes, save_pdparams, state_dict_to_variables
from vitjax.weights.download import DownloadError
from vitjax.weights.errors import WeightsError
from vitjax.weights.pdparams import read_pdparams


def _model_name(args, state, source) -> str:
    return args.model or guess_model(state, source=source)


def inspect(args) -> int:
    state = read_pdparams(args.file)
    name = _model_name(args, state, args.file)
    total = sum(v.size for v in state.values())
    print(f"{args.file}: {name}, {len(state)} arrays, {total / 1e6:.2f} M values, {infer_num_classes(state)} classes")
    if args.verbose:
        for key, value in state.items():
            print(f"  {key:50s} {str(value.dtype):8s} {tuple(value.shape)}")
    return 0


def convert(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if args.ema and src.suffix == ".pdparams":
        raise SystemExit(
            f"convert: --ema: {src} is a .pdparams file, which has no EMA; expected a workdir or checkpoint"
        )
    options = dict(num_classes=args.num_classes, img_size=args.img_size, head=args.head, seed=args.seed)
    if src.suffix == ".pdparams":
        state = read_pdparams(src)
        name = _model_name(args, state, str(src))
        variables = state_dict_to_variables(state, name, source=str(src), **options)
    else:
        if not args.model:
            raise SystemExit("convert: --model is required when the source is an orbax checkpoint or workdir")
        name, variables = args.model, load_variables(src, ema=args.ema)
    if dst.suffix == ".pdparams":
        save_pdparams(variables, name, dst)
    else:
        save_variables(dst, variables)
    print(f"{src} -> {dst} ({name})")
    return 0


def verify(args) -> int:
    import jax
    import numpy as np

    paddle = require_paddle()

    import vitjax
    from interop.paddle_models import build_paddle_model, load_numpy_state

    state = read_pdparams(args.file)
    name = _model_name(args, state, args.file)
    num_classes = infer_num_classes(state)
    variables = state_dict_to_variables(state, name, source=args.file)
    model = vitjax.create_model(name, num_classes=num_classes)
    layer = load_numpy_state(build_paddle_model(name, num_classes=num_classes), state)
    size = model.arch.img_size
    images = np.random.RandomState(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1)))
    with paddle.no_grad():
        ref = layer(paddle.to_tensor(images)).numpy()
    diff = float(np.abs(ours - ref).max())
    ok = diff <= args.atol
    print(f"{name}: max |logit difference| = {diff:.3g} ({'ok' if ok else 'FAILED'}, tolerance {args.atol:g})")
    return 0 if ok else 1


def export(args) -> int:
    from interop.inference import export_inference_model, export_onnx

    out = export_inference_model(
        args.src, args.model, args.out_dir, softmax=not args.logits, format=args.format, overwrite=args.overwrite
    )
    print(f"{args.src} -> {out} ({args.format}, {'logits' if args.logits else 'softmax probabilities'})")
    if args.onnx:
        print(f"{out} -> {export_onnx(out, overwrite=True)}")
    return 0


def import_model(args) -> int:
    from interop.inference import read_inference_model

    imported = read_inference_model(args.model_dir, args.model, verify=not args.no_verify)
    dst = Path(args.dst)
    if dst.suffix == ".pdparams":
        save_pdparams(imported.variables, imported.model_name, dst)
    else:
        save_variables(dst, imported.variables)
    check = "not verified" if imported.max_abs_diff is None else f"max |output difference| {imported.max_abs_diff:.3g}"
    output = "softmax" if imported.softmax else "logits"
    print(f"{args.model_dir} -> {dst} ({imported.model_name}, {imported.format}, {output} output, {check})")
    return 0


def onnx(args) -> int:
    if args.source_kind == "jax":
        from interop.onnx_from_jax import DEFAULT_OPSET, export_onnx_from_jax

        if args.out is None:
            raise SystemExit("onnx --from jax: name the output file (SRC OUT.onnx)")
        out = export_onnx_from_jax(
            args.model_dir,
            args.out,
            args.model,
            softmax=not args.logits,
            opset=args.opset or DEFAULT_OPSET,
            overwrite=args.overwrite,
        )
        print(f"{args.model_dir} -> {out} (jax2onnx, {'logits' if args.logits else 'softmax probabilities'})")
        return 0
    from interop.inference import export_onnx

    opset = args.opset or 13
    print(f"{args.model_dir} -> {export_onnx(args.model_dir, args.out, opset=opset, overwrite=args.overwrite)}")
    return 0


def quantize(args) -> int:
    from interop.quantize import quantize_onnx

    out = quantize_onnx(
        args.model_file,
        args.calibration,
        args.out,
        model_name=args.model,
        max_images=args.max_images,
        overwrite=args.overwrite,
    )
    print(f"{args.model_file} -> {out} (int8 QDQ, calibrated on {args.calibration})")
    return 0


def jax_export(args) -> int:
    from interop.jax_artifact import export_jax_artifact, sidecar_path

    out = export_jax_artifact(
        args.src,
        args.out,
        args.model,
        platforms=args.platforms,
        max_batch=args.max_batch,
        overwrite=args.overwrite,
    )
    print(f"{args.src} -> {out} + {sidecar_path(out).name} ({', '.join(args.platforms)})")
    return 0


def backends(args) -> int:
    from interop.deploy import BACKENDS, backend_status
    from interop.tensorrt import tensorrt_settings

    for backend in BACKENDS:
        ok, reason = backend_status(backend)
        print(f"{backend:16s} {'available' if ok else 'unavailable'}: {reason}")
        if backend.startswith("paddle-trt-"):
            settings = tensorrt_settings("<model_dir>", backend.rsplit("-", 1)[-1], img_size=224)
            print(f"{'':16s} settings: {settings.describe()}")
    return 0


def parity(args) -> int:
    from interop.parity import TOLERANCES, Tolerance, load_photos, run_parity, write_report

    tolerances = {"fp32": Tolerance(args.atol_logits, args.atol_probs)} if args.atol_logits is not None else None
    if args.atol_logits is None and args.atol_probs is not None:
        tolerances = {"fp32": Tolerance(TOLERANCES["fp32"].logits, args.atol_probs)}
    report = run_parity(
        args.src,
        args.out,
        args.model,
        backends=args.backends,
        photos=load_photos(args.images) if args.images else None,
        latency_runs=args.runs,
        threads=args.threads,
        tolerances=tolerances,
        calibration=args.calibration,
    )
    md, js = write_report(report, args.out)
    for backend, entry in report["backends"].items():
        if not entry["available"]:
            print(f"{backend:16s} not run: {entry['reason']}")
            continue
        verdict = "ok" if entry["passed"] else "FAILED"
        if entry["precision"] == "int8":
            judged = [m for m in entry["inputs"].values() if m["passed"] is not None]
            agree = min((m["top1_agreement"] for m in judged), default=float("nan"))
            change = max((m["top1_prob_delta"] for m in judged), default=float("nan"))
            print(f"{backend:16s} {verdict}: top-1 agreement {agree:.0%}, top-1 probability change {change:.3g}")
            continue
        worst = max(m["max_abs_logits"] for m in entry["inputs"].values())
        print(f"{backend:16s} {verdict}: max |logit difference| {worst:.3g}")
    print(f"report: {md} and {js}")
    return 0 if report["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe a .pdparams file")
    p.set_defaults(run=inspect)
    p.add_argument("file")
    p.add_argument("--model")
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("convert", help="convert weights between .pdparams and orbax checkpoints")
    p.set_defaults(run=convert)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--model", help="registered model name (guessed from a .pdparams file when omitted)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--head", choices=["strict", "reinit", "skip"], default="strict")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", action="store_true", help="the workdir's EMA of the weights (trained with ema.decay > 0)")
    p = sub.add_parser("verify", help="check our model against the Paddle mirror on a .pdparams file")
    p.set_defaults(run=verify)
    p.add_argument("file")
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--atol", type=float, default=1e-4)
    p = sub.add_parser("export", help="write a Paddle inference model directory")
    p.set_defaults(run=export)
    p.add_argument("src", help=".pdparams file, orbax variables checkpoint or training workdir")
    p.add_argument("out_dir")
    p.add_argument("--model", help="registered model name (guessed from a .pdparams file when omitted)")
    p.add_argument("--format", choices=["pir", "legacy"], default="pir")
    p.add_argument("--logits", action="store_true", help="output logits instead of softmax probabilities")
    p.add_argument("--onnx", action="store_true", help="also write inference.onnx (Paddle2ONNX)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("import", help="recover Flax variables from a Paddle inference model directory")
    p.set_defaults(run=import_model)
    p.add_argument("model_dir")
    p.add_argument("dst", help="orbax variables directory, or a .pdparams file")
    p.add_argument("--model", help="registered model name (inferred from the parameters when omitted)")
    p.add_argument("--no-verify", action="store_true", help="skip running the file's program against ours")
    p = sub.add_parser("onnx", help="convert an exported inference model (or, --from jax, the JAX model) to ONNX")
    p.set_defaults(run=onnx)
    p.add_argument(
        "model_dir",
        metavar="SRC",
        help="inference model dir (Paddle2ONNX); with --from jax: a registered model name (pretrained), "
        ".pdparams, orbax checkpoint or workdir",
    )
    p.add_argument("out", nargs="?")
    p.add_argument(
        "--from",
        dest="source_kind",
        choices=["paddle", "jax"],
        default="paddle",
        help="paddle: Paddle2ONNX on an exported dir (default); jax: jax2onnx on our model, no Paddle needed",
    )
    p.add_argument("--model", help="--from jax: registered model name (needed for an orbax checkpoint or workdir)")
    p.add_argument("--logits", action="store_true", help="--from jax: output logits instead of softmax probabilities")
    p.add_argument("--opset", type=int, help="default 13 (paddle), 21 (jax)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("quantize", help="static int8 quantization of an ONNX model (ONNX Runtime), for CPUs")
    p.set_defaults(run=quantize)
    p.add_argument("model_file", metavar="MODEL.onnx", help="from `onnx --from jax` or Paddle2ONNX (then --model)")
    p.add_argument("--calibration", required=True, metavar="DIR", help="folder of images (any depth) to calibrate on")
    p.add_argument("--out", required=True, metavar="OUT.onnx", help="the int8 model, e.g. MODEL.int8.onnx")
    p.add_argument("--max-images", type=int, default=128, help="calibrate on the first N images, sorted (default 128)")
    p.add_argument("--model", help="registered model name, for a file without vitjax metadata (Paddle2ONNX's)")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("jax-export", help="write a portable jax.export artifact (StableHLO) and its sidecar")
    p.set_defaults(run=jax_export)
    p.add_argument("src", help="registered model name (pretrained), .pdparams, orbax variables checkpoint or workdir")
    p.add_argument("out", help="the artifact, e.g. deit_tiny.jaxexport (the sidecar is OUT.json)")
    p.add_argument("--model", help="registered model name (needed for an orbax checkpoint or workdir)")
    p.add_argument("--platforms", nargs="+", default=["cpu", "cuda", "tpu"], help="lowered for (default: all three)")
    p.add_argument("--max-batch", type=int, help="a batch limit the loaders enforce")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("backends", help="list deployment backends and whether they run here")
    p.set_defaults(run=backends)
    p = sub.add_parser("parity", help="check every backend against JAX and write a report")
    p.set_defaults(run=parity)
    p.add_argument("src", help=".pdparams file, orbax variables checkpoint or training workdir")
    p.add_argument("--out", required=True, help="directory for the report and the exported models")
    p.add_argument("--model")
    p.add_argument("--backends", nargs="+", help="default: all")
    p.add_argument("--images", nargs="+", help="photos to check (default: scikit-image's sample photos)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per batch size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--atol-logits", type=float, help="fp32 tolerance on logits (default 1e-4)")
    p.add_argument("--atol-probs", type=float, help="fp32 tolerance on probabilities (default 1e-4)")
    p.add_argument(
        "--calibration", metavar="DIR", help="images onnxruntime-int8 is calibrated on (default: the photos checked)"
    )
    from interop.serving.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    add_pretrained_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (WeightsError, InteropError, CheckpointError, ImageError, DownloadError, ArtifactError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)  # OSError: a disk that is full or not ours to write, ...
        return 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:  # a CPU server: start again once with mimalloc preloaded (vitjax.hostmem)
        from vitjax.hostmem import preload_allocator

        preload_allocator()
    sys.exit(main())
