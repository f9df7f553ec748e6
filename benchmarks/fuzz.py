"""Fuzzing every reader of outside bytes: seeded, bounded, and repeatable.

``python -m benchmarks.fuzz --cases 10000`` runs a campaign: for each reader (``.pdparams``,
``.pdiparams``, ``.pdiparams.info``, program files, inference tar archives, images), valid seed files are
built here (no download, no Paddle needed) and mutated (bit flips, boundary integers,
insertions, deletions, duplications, truncations, splices, and hostile pickle opcodes); each
case runs in a worker process under a memory cap, with a time limit per case. A case ends
in one of:

* ``ok``: the reader accepted the bytes (a mutation that kept the file valid);
* ``typed``: the reader refused them with its own one-line error type;
* ``untyped``: any other exception (a defect); ``memory``: the case allocated more than the
  bound (``MEMORY_FACTOR`` x file size + ``MEMORY_BASE``, traced by ``tracemalloc``, which sees
  numpy's buffers too); ``timeout``: over the per-case limit; ``crash``: the worker died
  (signal, or the hard memory cap); ``escaped``: a file appeared outside the extraction target;
  ``executed``: the marker a hostile pickle tries to create exists.

A worker that crashes or hangs is restarted after the case that killed it, so one bad case
costs one case. Results go to ``benchmarks/results/fuzz/latest.{json,md}``; the CI test
(``tests/vitjax/test_untrusted_files.py``) runs a few hundred cases per reader through the
same :func:`run_campaign`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import random
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fuzz"
MEMORY_FACTOR = 8  # the bound on a reader's traced allocations: a multiple of the file's size...
MEMORY_BASE = 16 << 20  # ...plus a constant (numpy and Pillow's working buffers)
HARD_MEMORY_CAP = 3 << 30  # the worker's address-space limit: a runaway allocation dies, not the machine
CORE_READERS = ("pdparams", "tar")  # need neither Paddle nor the serving extra
ALL_READERS = ("pdparams", "tar", "pdiparams", "info", "program", "image")
MARKER = "vitjax-fuzz-executed"


# -- seeds: valid files of each format, written here --------------------------------------------
def _pdparams_seeds(rng: np.random.Generator) -> list[bytes]:
    from vitjax.weights.convert import variables_to_state_dict
    from vitjax.weights.pdparams import STRUCTURED_NAMES_KEY

    seeds = []
    for protocol in (2, 4):
        state = variables_to_state_dict(_small_variables(), "DeiT_test_patch8_32")
        state[STRUCTURED_NAMES_KEY] = {key: f"param_{i}" for i, key in enumerate(state)}
        seeds.append(pickle.dumps(dict(state), protocol=protocol))
    seeds.append(pickle.dumps({"w": rng.standard_normal((3, 4)).astype(np.float32)}, protocol=4))
    return seeds


_VARIABLES_CACHE: list = []


def _small_variables():
    """A test-size DeiT's random variables (computed once per process)."""
    if not _VARIABLES_CACHE:
        import jax
        import jax.numpy as jnp

        from vitjax.models.registry import create_model

        model = create_model("DeiT_test_patch8_32")
        size = model.arch.img_size
        _VARIABLES_CACHE.append(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return _VARIABLES_CACHE[0]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pdiparams_record(array: np.ndarray) -> bytes:
    """One tensor as Paddle's combined parameters file frames it (float32 only)."""
    desc = b"\x08" + _varint(5) + b"".join(b"\x10" + _varint(d) for d in array.shape)
    return (
        struct.pack("<IQI", 0, 0, 0)
        + struct.pack("<i", len(desc))
        + desc
        + np.ascontiguousarray(array, np.float32).tobytes()
    )


def _pdiparams_seeds(rng: np.random.Generator) -> list[bytes]:
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in [(4,), (3, 5), (2, 2, 2), (1,)]]
    return [b"".join(pdiparams_record(a) for a in arrays), pdiparams_record(arrays[1])]


def _info_seeds(rng: np.random.Generator) -> list[bytes]:
    info = {
        f"linear_{i}.w_0": {"structured_name": f"blocks.{i}.mlp.fc1.weight", "stop_gradient": False, "trainable": True}
        for i in range(4)
    }
    return [pickle.dumps(info, protocol=2), pickle.dumps(info, protocol=4)]


def _tar_seeds(rng: np.random.Generator) -> list[bytes]:
    seeds = []
    for mode in ("w:gz", "w", "w:xz"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode=mode) as tar:
            for name, size in [("model/", None), ("model/inference.json", 300), ("model/inference.pdiparams", 1000)]:
                info = tarfile.TarInfo(name.rstrip("/"))
                if size is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = size
                    tar.addfile(info, io.BytesIO(rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
        seeds.append(buffer.getvalue())
    return seeds


def _image_seeds(rng: np.random.Generator) -> list[bytes]:
    from PIL import Image

    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    seeds = []
    for fmt, mode in [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "I;16"), ("PNG", "P"), ("GIF", "P"), ("BMP", "RGB")]:
        image = Image.fromarray(pixels)
        image = (
            image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode) if mode != "RGB" else image
        )
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds


def _program_seeds(rng: np.random.Generator) -> list[bytes]:
    """A legacy ``.pdmodel`` exported by Paddle 2.6 (a test fixture) and a PIR-shaped JSON program."""
    legacy = ROOT / "tests" / "fixtures" / "legacy" / "DeiT_test_patch8_32" / "inference.pdmodel"
    program = {
        "base_code": {"magic": "pir", "version": 1, "trainable": False},
        "program": {
            "regions": [
                {
                    "#": "region_0",
                    "blocks": [
                        {
                            "#": "block_0",
                            "args": [],
                            "ops": [
                                {
                                    "#": "p",
                                    "A": [0, 1, 1, "x"],
                                    "O": {"%": 1, "TT": {"#": "0.t_dtensor", "D": [[1, 3, 32, 32]]}},
                                },
                            ],
                        }
                    ],
                }
            ]
        },
    }
    return [legacy.read_bytes(), json.dumps(program).encode()]


SEEDS: dict[str, Callable[[np.random.Generator], list[bytes]]] = {
    "pdparams": _pdparams_seeds,
    "tar": _tar_seeds,
    "pdiparams": _pdiparams_seeds,
    "info": _info_seeds,
    "image": _image_seeds,
    "program": _program_seeds,
}


# -- mutations ----------------------------------------------------------------------------------
_BOUNDARY_INTS = [
    0,
    1,
    -1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    10**8,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]
# Pickle fragments an attacker reaches for: calls, huge memo indices, deep nesting, object arrays.
_HOSTILE_PICKLE = [
    b"cos\nsystem\n(V" + f"touch {MARKER}".encode() + b"\ntR.",
    b"cbuiltins\neval\n(V__import__('os').system('touch " + MARKER.encode() + b"')\ntR.",
    b"\x80\x02}r\x00\xe1\xf5\x05.",  # EMPTY_DICT, LONG_BINPUT 1e8
    b"\x80\x02" + b"(" * 5000 + b")" + b"t" * 5000 + b".",
    b"\x80\x02" + b")\x85" * 20000 + b".",  # a tuple nested 20,000 deep
    b"\x80\x02cnumpy\nndarray\n(J\x00\xc2\xeb\x0b\x85cnumpy\ndtype\n(VO8\n\x89\x88tRtR.",  # ndarray((2e8,), 'O')
    b"\x80\x02cnumpy\ndtype\n(Vf4\n\x89\x88tR(K\x03V<\nNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
    b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b".",
    b"\x80\x02X" + struct.pack("<I", 0xFFFFFFFF) + b"abc.",
]


def mutate(data: bytes, rng: random.Random, others: list[bytes], reader: str) -> bytes:
    """One to four random edits of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(10 if reader in ("pdparams", "info") else 9)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:  # flip bits
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:  # an interesting byte
            buf[min(pos, len(buf) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif choice == 2:  # a boundary integer, 4 or 8 bytes, either sign convention
            value = rng.choice(_BOUNDARY_INTS)
            size = rng.choice([4, 8])
            packed = (value % (1 << (8 * size))).to_bytes(size, "little")
            buf[pos : pos + size] = packed
        elif choice == 3:  # delete a run
            del buf[pos : pos + rng.randint(1, 64)]
        elif choice == 4:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif choice == 5 and buf:  # duplicate a run
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 256)]
        elif choice == 6:  # truncate
            del buf[pos:]
        elif choice == 7 and others:  # splice with another seed
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif choice == 8:  # a varint of continuation bytes (protobuf framing)
            buf[pos:pos] = b"\xff" * rng.choice([11, 100, 4096])
        elif choice == 9:  # a hostile pickle fragment, whole or spliced in
            fragment = rng.choice(_HOSTILE_PICKLE)
            buf = bytearray(fragment) if rng.random() < 0.5 else buf[:pos] + bytearray(fragment[2:])
    return bytes(buf)


# -- readers ----------------------------------------------------------------------------------
def _reader(name: str) -> tuple[Callable[[Path, Path], object], tuple[type, ...]]:
    """(function of (file, scratch directory), the error types it promises)."""
    if name == "pdparams":
        from vitjax.weights.convert import state_dict_to_variables
        from vitjax.weights.errors import WeightsError
        from vitjax.weights.pdparams import read_pdparams

        def read(path: Path, scratch: Path):
            state = read_pdparams(path)
            return state_dict_to_variables(state, "DeiT_test_patch8_32", source=str(path))

        return read, (WeightsError,)
    if name == "tar":
        from vitjax.weights.download import UnsafeArchiveError, safe_extract_tar

        return (lambda path, scratch: safe_extract_tar(path, scratch / "target")), (UnsafeArchiveError,)
    if name == "pdiparams":
        from interop.errors import InferenceModelError
        from interop.inference.pdiparams import scan_params_file

        return (lambda path, scratch: scan_params_file(path)), (InferenceModelError,)
    if name == "info":
        from interop.errors import InferenceModelError
        from interop.inference.pdiparams import read_structured_names

        return (lambda path, scratch: read_structured_names(path)), (InferenceModelError,)
    if name == "program":
        from interop.errors import InferenceModelError
        from interop.inference.program_check import check_program_file

        def check(path: Path, scratch: Path):
            named = path.with_name("inference.json" if path.read_bytes()[:1] == b"{" else "inference.pdmodel")
            path.rename(named)
            try:
                return check_program_file(named)
            finally:
                named.rename(path)

        return check, (InferenceModelError,)
    if name == "image":
        from interop.serving.errors import ServeError
        from interop.serving.images import decode_image

        return (lambda path, scratch: decode_image(path.read_bytes(), max_pixels=4_000_000, name=path.name)), (
            ServeError,
        )
    raise ValueError(f"unknown reader {name!r}; known: {', '.join(ALL_READERS)}")


def case_input(reader: str, seed: int, index: int, seeds: list[bytes]) -> bytes:
    """Input ``index`` of a campaign: the seeds first, then mutations, each from its own RNG (no state kept)."""
    if index < len(seeds):
        return seeds[index]
    rng = random.Random(f"{reader}:{seed}:{index}")
    return mutate(rng.choice(seeds), rng, seeds, reader)


def _worker(reader: str, seed: int, count: int, start: int, case_seconds: float) -> None:
    """Runs cases ``start..count-1`` and prints one JSON line per case (the parent reads them)."""
    import resource
    import signal
    import tracemalloc

    resource.setrlimit(resource.RLIMIT_AS, (HARD_MEMORY_CAP, HARD_MEMORY_CAP))
    read, typed = _reader(reader)
    seeds = SEEDS[reader](np.random.default_rng(seed))

    def alarm(signum, frame):
        raise TimeoutError("case time limit")

    signal.signal(signal.SIGALRM, alarm)
    work = Path(tempfile.mkdtemp(prefix="vitjax-fuzz-"))
    os.chdir(work)  # a pickle that manages to run `touch MARKER` would create it here
    tracemalloc.start()
    for index in range(start, count):
        data = case_input(reader, seed, index, seeds)
        scratch = work / f"case{index}"
        scratch.mkdir()
        path = scratch / f"input.{reader}"
        path.write_bytes(data)
        print(json.dumps({"start": index}), flush=True)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, case_seconds)
        detail = ""
        try:
            read(path, scratch)
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
        except typed as e:
            outcome, detail = "typed", str(e)
            if (
                "\n" in detail
                or not detail.startswith(str(path))
                and reader in ("pdparams", "pdiparams", "info", "tar")
            ):
                outcome = "untyped"  # typed, but not one line naming the file
        except BaseException as e:  # noqa: BLE001 - any other exception is the defect we look for
            outcome, detail = "untyped", f"{type(e).__name__}: {e}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1] - base
        if outcome in ("ok", "typed") and peak > MEMORY_FACTOR * len(data) + MEMORY_BASE:
            outcome, detail = "memory", f"{peak} bytes traced for a {len(data)}-byte file"
        if (work / MARKER).exists() or (scratch / MARKER).exists():
            outcome, detail = "executed", "the hostile pickle's marker file exists"
        if reader == "tar":
            outside = [p.name for p in scratch.iterdir() if p.name not in (path.name, "target")]
            if outside:
                outcome, detail = "escaped", f"written outside the target: {outside}"
        print(
            json.dumps(
                {
                    "case": index,
                    "outcome": outcome,
                    "bytes": len(data),
                    "peak": peak,
                    "seconds": round(seconds, 4),
                    "detail": detail[:300],
                }
            ),
            flush=True,
        )
        _remove_tree(scratch)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run_campaign(
    reader: str, *, count: int, seed: int = 0, case_seconds: float = 10.0, total_seconds: float = 1800.0
) -> dict:
    """Runs ``count`` cases against ``reader`` in worker processes; returns the tally and the failures."""
    results: dict[int, dict] = {}
    start, deadline = 0, time.monotonic() + total_seconds
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    while start < count and time.monotonic() < deadline:
        command = [
            sys.executable,
            "-m",
            "benchmarks.fuzz",
            "--worker",
            reader,
            "--seed",
            str(seed),
            "--cases",
            str(count),
            "--start",
            str(start),
            "--case-seconds",
            str(case_seconds),
        ]
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        started = None
        for line in stdout.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "start" in record:
                started = record["start"]
            elif "case" in record:
                results[record["case"]] = record
                started = None
        if process.returncode == 0:
            break
        if started is None:  # died before its first case: the harness itself is broken
            raise RuntimeError(f"fuzz worker for {reader} failed before any case:\n{stderr[-3000:]}")
        kind = "timeout" if process.returncode in (-9, None) and time.monotonic() < deadline else "crash"
        results[started] = {
            "case": started,
            "outcome": kind,
            "bytes": None,
            "peak": None,
            "seconds": None,
            "detail": f"worker exit {process.returncode}: {stderr.strip().splitlines()[-1:] or ''}",
        }
        start = started + 1
    tally: dict[str, int] = {}
    for record in results.values():
        tally[record["outcome"]] = tally.get(record["outcome"], 0) + 1
    failures = [r for r in results.values() if r["outcome"] not in ("ok", "typed")]
    worst = (
        max((r["peak"] / max(r["bytes"], 1 << 16), r["bytes"]) for r in results.values() if r["peak"] is not None)
        if results
        else (0, 0)
    )
    slowest = max((r["seconds"] for r in results.values() if r["seconds"] is not None), default=0.0)
    return {
        "reader": reader,
        "cases": len(results),
        "requested": count,
        "seed": seed,
        "tally": tally,
        "failures": sorted(failures, key=lambda r: r["case"])[:50],
        "worst_memory_ratio": round(worst[0], 2),
        "slowest_case_seconds": slowest,
        "max_peak_bytes": max((r["peak"] for r in results.values() if r["peak"] is not None), default=0),
    }


def _cpu_name() -> str:
    from benchmarks import machine

    return machine.describe(measure_clock=False)["cpu"]


def _markdown(report: dict) -> str:
    lines = [
        f"# Fuzz campaign ({report['date']}, {report['cpu']}, Python {report['python']})",
        "",
        f"Command: `{report['command']}`",
        "",
        "| reader | cases | ok | typed | untyped | memory | timeout | crash | escaped | executed | "
        "peak traced (max) | worst peak / max(file size, 64 KiB) | slowest case (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["readers"]:
        t = r["tally"]
        counts = " | ".join(
            str(t.get(k, 0)) for k in ("ok", "typed", "untyped", "memory", "timeout", "crash", "escaped", "executed")
        )
        lines.append(
            f"| {r['reader']} | {r['cases']} | {counts} | {r['max_peak_bytes'] / 2**20:.1f} MiB | "
            f"{r['worst_memory_ratio']} | {r['slowest_case_seconds']} |"
        )
    lines += [
        "",
        f"Bound per case: traced allocations <= {MEMORY_FACTOR} x file size + {MEMORY_BASE >> 20} MiB; "
        f"worker address space capped at {HARD_MEMORY_CAP >> 30} GiB; time limit {report['case_seconds']} s per case.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", nargs="+", default=list(ALL_READERS), choices=ALL_READERS)
    parser.add_argument("--cases", type=int, default=10_000, help="cases per reader (seeds included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=ALL_READERS, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.seed, args.cases, args.start, args.case_seconds)
        return
    reports = []
    for reader in args.readers:
        began = time.perf_counter()
        report = run_campaign(
            reader, count=args.cases, seed=args.seed, case_seconds=args.case_seconds, total_seconds=24 * 3600
        )
        report["wall_seconds"] = round(time.perf_counter() - began, 1)
        print(f"{reader}: {report['cases']} cases in {report['wall_seconds']} s: {report['tally']}", flush=True)
        reports.append(report)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "command": "python -m benchmarks.fuzz " + " ".join(argv if argv is not None else sys.argv[1:]),
        "case_seconds": args.case_seconds,
        "readers": reports,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "latest.md").write_text(_markdown(report))
    print(_markdown(report))
    if any(r["failures"] for r in reports):
        sys.exit(1)


if __name__ == "__main__":
    main()
