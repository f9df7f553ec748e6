"""Triton's own load generator, ``perf_analyzer``, driving ``python -m interop serve`` unchanged.

``python -m benchmarks.perf_analyzer --perf-analyzer PATH`` writes a DeiT-tiny ``.pdparams``
with random weights (the speed does not depend on their values), starts the server on
127.0.0.1 with the chosen backend, and runs ``perf_analyzer -i http`` against its KServe v2
endpoints at each concurrency (``--concurrency``), reading the model's configuration from
``/v2/models/{name}/config`` as it does from Triton. Its CSV (throughput, p50/p90/p95/p99
latency, and the server-side queue and compute times it reads from ``/v2/models/stats``) goes to
``benchmarks/results/serving/perf_analyzer_{http,grpc}.{csv,md}`` with the command and the CPU, and
its printed report (every measurement window, and the stable ones it kept) to ``.log`` beside them.

perf_analyzer is a C++ program of the Triton client. PyPI's ``perf-analyzer`` is a
placeholder; the binary ships in tritonclient's manylinux wheels up to 2.40
(``tritonclient-2.40.0.data/data/bin/perf_analyzer``), which need ``libb64`` (Debian:
``libb64-0d``) and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12`` wheel) to start, even for
HTTP on a CPU; see docs/serving_hardening.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serving"
MODEL = "DeiT_tiny_patch16_224"


def _write_weights(path: Path) -> None:
    import jax
    import numpy as np

    from vitjax.models.registry import create_model
    from vitjax.weights.convert import save_pdparams

    model = create_model(MODEL)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    save_pdparams(variables, MODEL, path)


def _wait_ready(url: str, process: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): {process.stderr.read()[-2000:]}")
        try:
            if urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("the server was not ready in time")


def _cpu_name() -> str:
    from benchmarks import machine

    return machine.describe(measure_clock=False)["cpu"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", required=True, help="path of the perf_analyzer binary")
    parser.add_argument("--backend", default="jax", help="the server's --backend")
    parser.add_argument("--concurrency", default="1:8:3", help="perf_analyzer's --concurrency-range start:end:step")
    parser.add_argument("--batch", type=int, default=1, help="images per request (perf_analyzer's -b)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's dynamic batch size")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http", help="perf_analyzer's -i")
    parser.add_argument("--grpc-port", type=int, default=8124, help="the server's --grpc-port (with --protocol grpc)")
    parser.add_argument("--window-ms", type=int, default=10000, help="perf_analyzer's --measurement-interval")
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10.0,
        help="perf_analyzer's: how far (%%) 3 windows in a row may differ to count as stable",
    )
    parser.add_argument(
        "--max-trials", type=int, default=10, help="perf_analyzer's: windows per concurrency before it gives up"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{MODEL}.pdparams"
        _write_weights(weights)
        serve = [
            sys.executable,
            "-m",
            "interop",
            "serve",
            str(weights),
            "--backend",
            args.backend,
            "--port",
            str(args.port),
            "--max-batch-size",
            str(args.max_batch_size),
            "--log-level",
            "warning",
            "--grpc-port",
            str(args.grpc_port),
        ]
        server = subprocess.Popen(serve, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{args.port}"
        try:
            _wait_ready(url, server)
            report = Path(tmp) / "perf.csv"
            # Zeros for `x` (preprocessed pixels), the model's one declared input.
            data = Path(tmp) / "input.json"
            data.write_text(json.dumps({"data": [{"x": {"content": [0.0] * (3 * 224 * 224), "shape": [3, 224, 224]}}]}))
            command = [
                args.perf_analyzer,
                "-m",
                MODEL,
                "-u",
                f"127.0.0.1:{args.port if args.protocol == 'http' else args.grpc_port}",
                "-i",
                args.protocol,
                "-b",
                str(args.batch),
                "--concurrency-range",
                args.concurrency,
                "--measurement-interval",
                str(args.window_ms),
                "--stability-percentage",
                f"{args.stability_percentage:g}",
                "--max-trials",
                str(args.max_trials),
                "--input-data",
                str(data),
                "-f",
                str(report),
                "--verbose-csv",
            ]
            run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            if run.returncode != 0:
                raise RuntimeError(
                    f"perf_analyzer failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
                )
            table = report.read_text()
            measured = {int(row["Concurrency"]) for row in csv.DictReader(io.StringIO(table))}
            start, end, step = (int(x) for x in (args.concurrency.split(":") + ["1"])[:3])
            missing = sorted(set(range(start, end + 1, step)) - measured)
            if missing:  # perf_analyzer stops at the first unstable concurrency and still exits 0
                raise RuntimeError(
                    f"perf_analyzer found no stable measurement at concurrency {missing} (the machine busy? "
                    f"raise --window-ms or --stability-percentage):\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
                )
        finally:
            server.terminate()
            server.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"perf_analyzer_{args.protocol}.csv").write_text(table)
    # Its own report: every measurement window ("Pass [n]") and the stable one it kept, per concurrency.
    (args.out / f"perf_analyzer_{args.protocol}.log").write_text(
        (run.stdout + run.stderr).replace(str(report), "perf.csv").replace(str(data), "input.json")
    )
    shown = " ".join(["perf_analyzer", *command[1:]]).replace(str(report), "perf.csv").replace(str(data), "input.json")
    rows = sorted(csv.DictReader(io.StringIO(table)), key=lambda row: int(row["Concurrency"]))
    lines = [
        f"# perf_analyzer -i {args.protocol} against `python -m interop serve` ({time.strftime('%Y-%m-%d')}, {_cpu_name()}, "
        f"{os.cpu_count()} cores)",
        "",
        f"Server: `python -m interop serve {MODEL}.pdparams --backend {args.backend} --max-batch-size "
        f"{args.max_batch_size} --port {args.port} --grpc-port {args.grpc_port}` (random weights). "
        f"Client: `{shown}`. Command: `python -m benchmarks.perf_analyzer "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        "| concurrency | inferences/s | p50 ms | p90 ms | p99 ms | server queue ms | server compute ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:

        def us(key: str, row: dict = row) -> float:  # perf_analyzer reports microseconds
            return float(row.get(key, 0) or 0) / 1000

        compute = us("Server Compute Input") + us("Server Compute Infer") + us("Server Compute Output")
        lines.append(
            f"| {row['Concurrency']} | {float(row['Inferences/Second']):.1f} | {us('p50 latency'):.1f} | "
            f"{us('p90 latency'):.1f} | {us('p99 latency'):.1f} | {us('Server Queue'):.1f} | {compute:.1f} |"
        )
    (args.out / f"perf_analyzer_{args.protocol}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
