"""``python -m interop``: move weights between PaddleClas and vitjax from the shell.

  inspect  FILE.pdparams                      which model a file holds, and its shapes
  convert  SRC DST [--model NAME] [...]       .pdparams -> orbax variables dir, or
                                              orbax dir / training workdir -> .pdparams,
                                              or .pdparams -> .pdparams (new head/resolution)
  verify   FILE.pdparams [--model NAME]       our logits vs the Paddle mirror's on random images
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interop.pdparams import PdparamsError, read_pdparams
from interop.weights import guess_model, infer_num_classes, save_pdparams, state_dict_to_variables
from vitjax.checkpoints import CheckpointError, load_variables, save_variables

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
    options = dict(num_classes=args.num_classes, img_size=args.img_size, head=args.head, seed=args.seed)
    if src.suffix == ".pdparams":
        state = read_pdparams(src)
        name = _model_name(args, state, str(src))
        variables = state_dict_to_variables(state, name, source=str(src), **options)
    else:
        if not args.model:
            raise SystemExit("convert: --model is required when the source is an orbax checkpoint or workdir")
        name, variables = args.model, load_variables(src)
    if dst.suffix == ".pdparams":
        save_pdparams(variables, name, dst)
    else:
        save_variables(dst, variables)
    print(f"{src} -> {dst} ({name})")
    return 0


def verify(args) -> int:
    import jax
    import numpy as np
    import paddle

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p = sub.add_parser("verify", help="check our model against the Paddle mirror on a .pdparams file")
    p.set_defaults(run=verify)
    p.add_argument("file")
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--atol", type=float, default=1e-4)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (PdparamsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
