"""Load test of the HTTP server (``python -m interop serve``) on 127.0.0.1, and what the server costs.

    python -m benchmarks.serve_load                        # DeiT-tiny, random weights, onnxruntime, 8 clients, 30 s
    python -m benchmarks.serve_load --quick                # smoke run (~1 min)
    python -m benchmarks.serve_load --source W.pdparams --backend paddle-cpu --clients 16 --duration 60
    python -m benchmarks.serve_load --litserve /tmp/litserve-pkgs   # also the same predictor behind LitServe
    python -m benchmarks.serve_load --litserve /tmp/litserve-pkgs --no-decode-wait-too   # as recorded

Without ``--source``, DeiT_tiny_patch16_224 is initialised from random weights and saved as a
PaddleClas ``.pdparams``; any source is exported once (inference dir + ONNX) into a temporary
directory, and every contender loads that directory with the same backend and thread count:

1. **in-process**: the bare predictor in this process (``load_served_model``), no HTTP:
   sequential single images (decode + eval transform + predict), and the inference of one
   full batch (``max_batch_size``): the ceiling the server's throughput is measured against;
2. **sequential**: one client, one image per request, one request at a time;
3. **concurrent**: ``--clients`` clients (threads with a keep-alive connection each), one
   image per request, each sending its next request as soon as the last is answered, for
   ``--duration`` seconds per server, in ``--rounds`` rounds in which the servers (all started
   first, idle while not driven) take turns, the order rotated each round: whatever else the
   machine runs meanwhile falls on every contender alike. Reported: throughput, p50/p95/p99 latency, the batch sizes the
   dynamic batcher ran (from ``/metrics``), and every failure: a non-200 answer, a
   transport error, a wrong answer (top-5 probabilities not within 1e-4 of the in-process
   predictor's), or a lost request (the server's image counter must grow by exactly the
   number of answers);
4. with ``--litserve DIR`` (a ``pip install --target DIR litserve`` outside the project's
   environment), steps 2 and 3 against a minimal LitServe app around the same
   ``ServedModel`` (same decode, transform, predictor, batch size and batch timeout);
5. with ``--no-decode-wait-too``, steps 2 and 3 also against our server with
   ``--decode-wait-ms 0``: the batching policy before that flag, in the same run.

The server runs in its own process; the clients share the machine's cores with it (on a
small machine they take a noticeable share: the figures are what one box does end to end).
Writes ``<out>/serve_load.{json,md}`` (``serve_load_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import machine
from interop.serving.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "DeiT_tiny_patch16_224"
PROB_ATOL = 1e-4  # the fp32 parity tolerance on probabilities
READY_TIMEOUT_S = 600.0


def _log(message: str) -> None:
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


def prepare_model(source: str | None, model_name: str, work: Path) -> tuple[Path, str]:
    """An exported inference dir (with ``inference.onnx``) for ``source``; random ``model_name`` weights when None."""

    if source is None:
        import jax

        import vitjax

        size = vitjax.get_spec(model_name).img_size
        variables = jax.jit(vitjax.create_model(model_name).init)(
            jax.random.key(0), np.zeros((1, size, size, 3), np.float32)
        )
        source_path = work / f"{model_name}_random.pdparams"
        vitjax.save_pdparams(variables, model_name, source_path)
        described = f"{model_name}, random weights saved as PaddleClas .pdparams"
    else:
        source_path, described = Path(source), source
    if (source_path / "inference.onnx").is_file():
        return source_path, described
    from interop.inference import export_inference_model, export_onnx, read_inference_model, resolve_variables

    if source_path.is_dir() and any((source_path / f"inference.{e}").is_file() for e in ("json", "pdmodel")):
        info = read_inference_model(source_path, None, verify=False)
        name, variables, softmax = info.model_name, info.variables, info.softmax
    else:
        name, variables = resolve_variables(source_path, None)
        softmax = True
    model_dir = export_inference_model(variables, name, work / "model", softmax=softmax)
    export_onnx(model_dir)
    return model_dir, described


def photo_payloads() -> list[tuple[str, bytes]]:
    """Real photographs as JPEG (quality 90): what a client would upload."""
    from PIL import Image

    from interop.parity import default_photos

    photos = default_photos()
    if not photos:
        rng = np.random.default_rng(0)
        photos = [(f"random {i}", rng.integers(0, 256, (480, 640, 3), np.uint8)) for i in range(4)]
    out = []
    for name, image in photos:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        out.append((name, buffer.getvalue()))
    return out


def json_request(data: bytes) -> bytes:
    """The body both servers get: ``{"images": [base64]}``."""
    return json.dumps({"images": [base64.b64encode(data).decode()]}).encode()


# ----------------------------------------------------------------------------- statistics


def latency_summary(latencies_s: list[float]) -> dict:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{"name{labels}": value}`` (comments dropped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def batch_size_counts(before: dict[str, float], after: dict[str, float]) -> dict[int, int]:
    """Batches run between two ``/metrics`` snapshots, by size (from the cumulative histogram buckets)."""
    cumulative = {}
    for key, value in after.items():
        match = re.fullmatch(r'vitjax_serve_batch_size_bucket\{le="([0-9.]+)"\}', key)
        if match:
            cumulative[int(float(match.group(1)))] = value - before.get(key, 0.0)
    counts, below = {}, 0.0
    for size in sorted(cumulative):
        if cumulative[size] - below > 0:
            counts[size] = int(round(cumulative[size] - below))
        below = cumulative[size]
    return counts


def read_batch_log(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    if path.is_file():
        for line in path.read_text().split():
            counts[int(line)] = counts.get(int(line), 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- in-process


def measure_in_process(
    model_dir: Path, backend: str, threads: int, max_batch_size: int, payloads, seconds: float
) -> tuple[dict, list[np.ndarray]]:
    """The bare predictor: sequential decode+transform+predict, and one full batch; also the expected probabilities."""
    from interop.serving.images import preprocess
    from interop.serving.model import load_served_model

    model = load_served_model(model_dir, backend, threads=threads, max_batch_size=max_batch_size)
    try:
        decode = lambda data: preprocess(data, model.transform, max_pixels=40_000_000)  # noqa: E731
        expected = [model.predict_probs(decode(data)[None])[0] for _, data in payloads]
        for size in sorted({1, max_batch_size}):  # warm-up
            model.predict_probs(np.zeros((size, 3, model.img_size, model.img_size), np.float32))
        single, decode_s, deadline, i = [], [], time.monotonic() + seconds, 0
        while time.monotonic() < deadline or len(single) < 5:
            start = time.perf_counter()
            image = decode(payloads[i % len(payloads)][1])
            decoded = time.perf_counter()
            model.predict_probs(image[None])
            single.append(time.perf_counter() - start)
            decode_s.append(decoded - start)
            i += 1
        batch = np.stack([decode(payloads[j % len(payloads)][1]) for j in range(max_batch_size)])
        batched, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline or len(batched) < 3:
            start = time.perf_counter()
            model.predict_probs(batch)
            batched.append(time.perf_counter() - start)
    finally:
        model.close()
    batch_s, decode_median = float(np.median(batched)), float(np.median(decode_s))
    return {
        "sequential": {
            "requests": len(single),
            "images_per_s": len(single) / sum(single),
            **latency_summary(single),
            "decode_transform_ms": decode_median * 1e3,
        },
        "batched": {
            "batch_size": max_batch_size,
            "batches": len(batched),
            "batch_ms": batch_s * 1e3,
            "images_per_s_inference": max_batch_size / batch_s,
            "images_per_s_with_decode": max_batch_size / (batch_s + max_batch_size * decode_median),
        },
    }, expected


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One server in a child process on 127.0.0.1; ``url``, ``path`` (the classify route), ``stop()``."""

    def __init__(self, command: list[str], port: int, path: str, ready_path: str, env: dict, log: Path):
        self.url, self.path, self.log_path = f"http://127.0.0.1:{port}", path, log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait(ready_path)

    def _wait(self, ready_path: str) -> None:
        from interop.serving.client import Client

        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s; see {self.log_path}")
            try:
                if Client(self.url, timeout=5).get(ready_path).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)

    def stop(self) -> int | None:
        """SIGTERM to the server's process group; its exit code (None when it had to be killed)."""
        code = None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:
            code = self.proc.returncode
        self._log.close()
        return code


def _common_flags(model_dir: Path, args, port: int) -> list[str]:
    """What both servers get: the model, backend, port, engine threads and batching."""
    flags = [str(model_dir), "--backend", args.backend, "--port", str(port), "--threads", str(args.threads)]
    return flags + ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]


def start_ours(model_dir: Path, args, log: Path) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "interop", "serve", *_common_flags(model_dir, args, port)]
    command += [
        "--decode-wait-ms",
        str(args.decode_wait_ms),
        "--max-concurrency",
        str(max(128, 2 * args.clients)),
        "--log-level",
        "warning",
    ]
    return ServerProcess(command, port, "/classify", "/ready", dict(os.environ), log)


def start_litserve(model_dir: Path, args, log: Path, batch_log: Path) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.serve_load", "--litserve-child", *_common_flags(model_dir, args, port)]
    command += ["--batch-log", str(batch_log)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), str(Path(args.litserve).resolve()), os.environ.get("PYTHONPATH")])
        ),
    }
    return ServerProcess(command, port, "/predict", "/health", env, log)


try:  # only in the LitServe child, whose PYTHONPATH holds --litserve's directory
    import litserve as _litserve
except ImportError:
    _litserve = None

if _litserve is not None:

    class ServedModelAPI(_litserve.LitAPI):
        """A minimal LitServe API around the same ServedModel (module level: LitServe pickles it into its worker)."""

        def __init__(self, args):
            super().__init__(max_batch_size=args.max_batch_size, batch_timeout=args.max_wait_ms / 1e3)
            self.args = args

        def setup(self, device):
            from interop.serving.model import load_served_model

            a = self.args
            self.model = load_served_model(
                a.litserve_child, a.backend, threads=a.threads, max_batch_size=a.max_batch_size
            )
            for size in sorted({1, a.max_batch_size}):
                self.model.predict_probs(np.zeros((size, 3, self.model.img_size, self.model.img_size), np.float32))

        def decode_request(self, request):
            from interop.serving.images import preprocess

            return preprocess(base64.b64decode(request["images"][0]), self.model.transform, max_pixels=40_000_000)

        def batch(self, inputs):
            return np.stack(inputs)

        def predict(self, images):
            with open(self.args.batch_log, "a") as f:
                f.write(f"{len(images)}\n")
            return self.model.predict_probs(images)

        def unbatch(self, output):
            return list(output)

        def encode_response(self, probs):
            from interop.serving.model import top_k

            (row,) = top_k(probs[None], self.model.labels, 5)
            return {"predictions": [{"top_k": row}]}


def run_litserve_child(args) -> None:
    """The LitServe server (runs in the child process started by :func:`start_litserve`)."""
    server = _litserve.LitServer(ServedModelAPI(args), accelerator="cpu", devices=1, workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


# ----------------------------------------------------------------------------- load


def drive(server: ServerProcess, bodies: list[bytes], expected: list[np.ndarray], clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients for ``seconds``; every request's outcome is recorded and checked."""
    from interop.serving.client import Client

    lock, results, start_barrier = threading.Lock(), [], threading.Barrier(clients + 1)
    deadline = [0.0]

    def client_loop(index: int) -> None:
        client, i, mine = Client(server.url, timeout=120), index, []
        start_barrier.wait()
        while time.monotonic() < deadline[0]:
            photo = i % len(bodies)
            i += 1
            t0 = time.perf_counter()
            try:
                reply = client.request("POST", server.path, bodies[photo], "application/json")
            except Exception as e:  # a transport failure is a lost request
                mine.append((time.perf_counter() - t0, "transport", f"{type(e).__name__}: {e}"))
                client.close()
                continue
            elapsed = time.perf_counter() - t0
            if reply.status != 200:
                mine.append((elapsed, f"http_{reply.status}", reply.text[:200]))
                continue
            mine.append((elapsed, check_answer(reply.json(), expected[photo]), None))
        client.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds
    start_barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join(seconds + 180)
    wall = time.perf_counter() - began
    ok = [r[0] for r in results if r[1] == "ok"]
    answered = sum(1 for r in results if not r[1].startswith(("http_", "transport")))  # got a 200
    failures: dict[str, int] = {}
    examples: dict[str, str] = {}
    for _, outcome, detail in results:
        if outcome != "ok":
            failures[outcome] = failures.get(outcome, 0) + 1
            examples.setdefault(outcome, detail or "")
    return {
        "clients": clients,
        "seconds": wall,
        "requests": len(results),
        "ok": len(ok),
        "answered_200": answered,
        "failures": failures,
        "failure_examples": examples,
        "hung_clients": sum(t.is_alive() for t in threads),
        "requests_per_s": len(ok) / wall,
        **latency_summary(ok),
        "_ok_latencies_s": ok,
    }


def merge_drives(parts: list[dict]) -> dict:
    """One result from several :func:`drive` rounds against the same server: counts added, latencies pooled."""
    ok = [x for part in parts for x in part["_ok_latencies_s"]]
    failures: dict[str, int] = {}
    examples: dict[str, str] = {}
    for part in parts:
        for kind, count in part["failures"].items():
            failures[kind] = failures.get(kind, 0) + count
        for kind, example in part["failure_examples"].items():
            examples.setdefault(kind, example)
    wall = sum(part["seconds"] for part in parts)
    return {
        "clients": parts[0]["clients"],
        "rounds": len(parts),
        "seconds": wall,
        "requests": sum(part["requests"] for part in parts),
        "ok": len(ok),
        "answered_200": sum(part["answered_200"] for part in parts),
        "failures": failures,
        "failure_examples": examples,
        "hung_clients": sum(part["hung_clients"] for part in parts),
        "requests_per_s": len(ok) / wall,
        **latency_summary(ok),
    }


def check_answer(payload: dict, probs: np.ndarray) -> str:
    """``ok`` when the top-5 are the expected ones: every probability within PROB_ATOL, and the top-5's values match."""
    try:
        (row,) = [p["top_k"] for p in payload["predictions"]]
        ids = [c["id"] for c in row]
        got = np.array([c["probability"] for c in row])
    except (KeyError, TypeError, ValueError):
        return "malformed_answer"
    best = np.sort(probs)[::-1][: len(ids)]
    if len(ids) != 5 or np.abs(got - probs[ids]).max() > PROB_ATOL or np.abs(got - best).max() > PROB_ATOL:
        return "wrong_answer"
    return "ok"


def measure_sequential(name: str, server: ServerProcess, bodies, expected, args) -> dict:
    """One client, one request at a time (after a short warm-up of the connection and code paths)."""
    _log(f"{name}: sequential single-image requests for {args.sequential_s:g} s")
    drive(server, bodies, expected, 1, min(2.0, args.sequential_s))
    result = drive(server, bodies, expected, 1, args.sequential_s)
    result.pop("_ok_latencies_s")
    return result


def concurrent_round(name: str, server: ServerProcess, bodies, expected, args, seconds: float, metrics: bool) -> dict:
    """``args.clients`` clients for ``seconds``; with ``metrics``, the server's batches and images from ``/metrics``."""
    from interop.serving.client import Client

    _log(f"{name}: {args.clients} concurrent clients for {seconds:g} s")
    before = parse_metrics(Client(server.url).get("/metrics").text) if metrics else {}
    result = drive(server, bodies, expected, args.clients, seconds)
    if metrics:
        after = parse_metrics(Client(server.url).get("/metrics").text)
        result["images_run_by_server"] = int(
            after.get("vitjax_serve_images_total", 0) - before.get("vitjax_serve_images_total", 0)
        )
        result["batch_sizes"] = batch_size_counts(before, after)
        result["server_errors_total"] = sum(
            v - before.get(k, 0) for k, v in after.items() if k.startswith("vitjax_serve_errors_total")
        )
    return result


def merge_rounds(parts: list[dict], batch_log: Path | None) -> dict:
    """The concurrent result over all rounds; batch sizes from ``/metrics`` deltas, or LitServe's ``batch_log``."""
    merged = merge_drives(parts)
    if batch_log is not None:
        merged["batch_sizes"] = read_batch_log(batch_log)
        return merged
    sizes: dict[int, int] = {}
    for part in parts:
        for size, count in part["batch_sizes"].items():
            sizes[size] = sizes.get(size, 0) + count
    merged["batch_sizes"] = dict(sorted(sizes.items()))
    merged["images_run_by_server"] = sum(part["images_run_by_server"] for part in parts)
    merged["lost"] = merged["answered_200"] - merged["images_run_by_server"]  # 0: every answer ran exactly once
    merged["server_errors_total"] = sum(part["server_errors_total"] for part in parts)
    return merged


# ----------------------------------------------------------------------------- report


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def mean_batch(counts: dict) -> float | None:
    """The mean batch size from ``{size: batches}`` (None when no batch ran)."""
    total = sum(counts.values())
    return sum(int(k) * v for k, v in counts.items()) / total if total else None


def _batches(counts: dict) -> str:
    mean = mean_batch(counts or {})
    if mean is None:
        return "n/a"
    return f"mean {mean:.2f}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))


def render_markdown(report: dict) -> str:
    m, a, ip = report["machine"], report["args"], report["in_process"]
    lines = [
        f"# Serving load test ({report['date']})",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['isa']}), {m['memory_gib']} GiB; clients and server share these cores",
        f"- Model: {report['model']}; backend `{a['backend']}`, {a['threads']} engine threads; "
        f"max_batch_size {a['max_batch_size']}, max_wait_ms {a['max_wait_ms']:g}"
        + (f"; ours: decode_wait_ms {a['decode_wait_ms']:g}" if a.get("decode_wait_ms") is not None else ""),
        f"- Load: {a['clients']} clients for {a['duration']:g} s per server, in {a.get('rounds', 1)} rounds in which "
        "the servers take turns (order rotated each round); 1 client for "
        f"{a['sequential_s']:g} s each before",
        f'- Requests: one JPEG photo each, JSON with base64 (`{{"images": [...]}}`), {len(report["photos"])} photos in turn; '
        f"an answer counts as right when its top-5 probabilities are within {PROB_ATOL:g} of the in-process predictor's",
        "",
        "| | requests | ok | failed | req/s | p50 ms | p95 ms | p99 ms | batch sizes run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    seq = ip["sequential"]
    lines.append(
        f"| in-process predictor, 1 image at a time (decode + predict) | {seq['requests']} | {seq['requests']} | 0 | "
        f"{seq['images_per_s']:.1f} | {_ms(seq['p50_ms'])} | {_ms(seq['p95_ms'])} | {_ms(seq['p99_ms'])} | 1 |"
    )
    b = ip["batched"]
    lines.append(
        f"| in-process predictor, batch of {b['batch_size']} (inference only / + decode) | {b['batches']} | {b['batches']} | 0 | "
        f"{b['images_per_s_inference']:.1f} / {b['images_per_s_with_decode']:.1f} | {_ms(b['batch_ms'])} | | | {b['batch_size']} |"
    )
    for stack, result in report["servers"].items():
        if "error" in result:
            lines.append(f"| {stack} | | | | | | | | {result['error']} |")
            continue
        for phase, title in (("sequential", "1 client"), ("concurrent", f"{a['clients']} clients")):
            r = result[phase]
            failed = r["requests"] - r["ok"]
            batches = _batches(r.get("batch_sizes") or {}) if phase == "concurrent" else ""
            lines.append(
                f"| {stack}, {title} | {r['requests']} | {r['ok']} | {failed} | {r['requests_per_s']:.1f} | "
                f"{_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {batches} |"
            )
    lines += [
        "",
        f"## Batching under {a['clients']} clients, side by side",
        "",
        "| server | mean batch | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for stack, result in report["servers"].items():
        if "error" not in result:
            c = result["concurrent"]
            mean = mean_batch(c.get("batch_sizes") or {})
            lines.append(
                f"| {stack} | {'n/a' if mean is None else f'{mean:.2f}'} | {c['requests_per_s']:.1f} | "
                f"{_ms(c['p50_ms'])} | {_ms(c['p99_ms'])} |"
            )
    lines += ["", "## What the server costs", ""]
    for stack, result in report["servers"].items():
        if "error" in result:
            continue
        c, s = result["concurrent"], result["sequential"]
        lines.append(
            f"- {stack}: {c['requests_per_s']:.1f} req/s under load = {c['requests_per_s'] / b['images_per_s_with_decode']:.0%} of the "
            f"in-process batch-{b['batch_size']} ceiling (inference + decode, {b['images_per_s_with_decode']:.1f} img/s); one request alone "
            f"takes {s['p50_ms']:.1f} ms at p50 against {seq['p50_ms']:.1f} ms in-process (+{s['p50_ms'] - seq['p50_ms']:.1f} ms: "
            f"HTTP, JSON/base64, queueing{', max_wait_ms' if a['max_wait_ms'] else ''}); "
            f"failures {sum(c['failures'].values())}, lost {c.get('lost', 'n/a')}, exit code after SIGTERM {result.get('exit_code')}"
        )
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source", help="inference dir, .pdparams, orbax checkpoint or workdir (default: random DeiT-tiny weights)"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model to initialise when --source is not given")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of concurrent load (per server, all rounds)")
    p.add_argument(
        "--rounds", type=int, default=3, help="the concurrent load in this many rounds, the servers taking turns"
    )
    p.add_argument(
        "--sequential-s", type=float, default=10.0, help="seconds of sequential requests (and of each in-process run)"
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--decode-wait-ms",
        type=float,
        default=ServeConfig.decode_wait_ms,
        help="our server's --decode-wait-ms (default: the server's; LitServe has none)",
    )
    p.add_argument(
        "--litserve", help="a directory holding litserve (pip install --target DIR litserve): also measure LitServe"
    )
    p.add_argument(
        "--no-decode-wait-too",
        action="store_true",
        help="also measure our server with --decode-wait-ms 0 (the batching policy before that flag)",
    )
    p.add_argument("--quick", action="store_true", help="4 clients, 8 s of load, 3 s sequential")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--litserve-child", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.sequential_s, args.rounds = 4, 8.0, 3.0, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.litserve_child:
        run_litserve_child(args)
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serve_load_quick" if args.quick else "serve_load"
    with tempfile.TemporaryDirectory(prefix="vitjax-serve-load-") as tmp:
        work = Path(tmp)
        _log("preparing the model (export + ONNX)")
        model_dir, described = prepare_model(args.source, args.model, work)
        payloads = photo_payloads()
        bodies = [json_request(data) for _, data in payloads]
        _log(f"in-process predictor ({args.backend}) for 2 x {args.sequential_s:g} s")
        in_process, expected = measure_in_process(
            model_dir, args.backend, args.threads, args.max_batch_size, payloads, args.sequential_s
        )
        servers: dict[str, dict] = {}
        stacks = [("FastAPI + uvicorn (ours)", "ours")]
        if args.no_decode_wait_too:
            stacks.append(("FastAPI + uvicorn (ours, --decode-wait-ms 0)", "ours-no-decode-wait"))
        if args.litserve:
            stacks.append(("LitServe", "litserve"))
        running: dict[str, tuple[ServerProcess, Path | None]] = {}  # title -> (server, LitServe's batch log)
        try:
            for title, stack in stacks:
                _log(f"starting {title}")
                try:
                    if stack == "litserve":
                        batch_log = work / "batches.txt"
                        running[title] = (start_litserve(model_dir, args, work / "litserve.log", batch_log), batch_log)
                    else:
                        flags = args if stack == "ours" else argparse.Namespace(**{**vars(args), "decode_wait_ms": 0.0})
                        running[title] = (start_ours(model_dir, flags, work / f"{stack}.log"), None)
                except RuntimeError as e:
                    servers[title] = {"error": str(e).splitlines()[0]}
                    _log(str(e))
            sequential = {
                title: measure_sequential(title, server, bodies, expected, args)
                for title, (server, _) in running.items()
            }
            for _, batch_log in running.values():
                if batch_log is not None:
                    batch_log.unlink(missing_ok=True)  # from here on it counts the concurrent batches only
            # Rounds in turn, the order rotated each round, so that whatever else the machine runs
            # meanwhile falls on every server alike.
            titles, parts = list(running), {title: [] for title in running}
            for r in range(args.rounds):
                for title in titles[r % len(titles) :] + titles[: r % len(titles)]:
                    server, batch_log = running[title]
                    parts[title].append(
                        concurrent_round(
                            title, server, bodies, expected, args, args.duration / args.rounds, batch_log is None
                        )
                    )
            for title, (_, batch_log) in running.items():
                servers[title] = {"sequential": sequential[title], "concurrent": merge_rounds(parts[title], batch_log)}
        finally:
            for title, (server, _) in running.items():
                code = server.stop()
                if title in servers:
                    servers[title]["exit_code"] = code
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.serve_load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine.describe(measure_clock=False),
        "model": described,
        "photos": [name for name, _ in payloads],
        "args": {k: v for k, v in vars(args).items() if k not in ("litserve_child", "port", "batch_log")},
        "in_process": in_process,
        "servers": servers,
    }
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(report))
    _log(f"wrote {out / stem}.json and .md")
    print(render_markdown(report))
    bad = [
        t
        for t, r in servers.items()
        if "error" in r or r["concurrent"]["requests"] != r["concurrent"]["ok"] or r["concurrent"].get("lost")
    ]
    if bad:
        _log(f"failed or lost requests: {', '.join(bad)}")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(
        1
        if report
        and any(
            "error" in r or r["concurrent"]["requests"] != r["concurrent"]["ok"] for r in report["servers"].values()
        )
        else 0
    )
