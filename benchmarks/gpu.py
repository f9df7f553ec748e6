"""One command that proves the GPU path: environment, parity, training and inference speed against
timm, and the input pipeline, on one GPU in under 8 minutes.

    python -m benchmarks.gpu              # on a machine with a CUDA GPU: benchmarks/results/gpu/latest.{md,json}
    python -m benchmarks.gpu --plan       # what would run, and each part's time budget
    python -m benchmarks.gpu --dry-run    # every part at toy sizes on the CPU (CI): dry-run.{md,json}

Five parts run in order, each with its own time budget (``PARTS``):

1. environment: GPU name and memory, driver, CUDA, the versions of JAX, jaxlib, Flax, torch, timm;
2. the ``gpu``-marked tests, then the parity sweep of all ten models (GPU fp32 against CPU fp32,
   tolerances in :mod:`benchmarks.gpu_parts.parity`) and bf16's top-1 against fp32's on real photos;
3. training throughput, bf16 compute and fp32 parameters, of DeiT-small, DeiT-base and TNT_small
   against timm eager and ``torch.compile`` (AMP bf16, the same AdamW), img/s and MFU;
4. inference throughput at batch 1, 64 and 256, JAX fp32 and bf16 against timm eager and compiled;
5. the input pipeline's img/s with the DeiT recipe on this machine's cores, next to what the
   training step consumes.

Every piece of work runs in its own process (``python -m benchmarks.gpu_parts``) with a deadline:
a job that fails or hangs is recorded and killed, and the next part runs. A part is skipped, with
the reason in the report, when the parts before it left less than its minimum of the overall limit.
This driver imports neither JAX nor torch, so only one process at a time holds the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_parts.common import MFU_FORMULA, Sizes, bf16_peak, train_flops_per_image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
LIMIT_S = 470.0  # the whole command, under the 8 minutes the issue allows
GRACE_S = 15.0  # a job past its deadline gets this long to finish its item before it is killed
GPU_TEST_FILES = ("tests/vitjax/test_gpu_benchmark.py", "tests/interop/test_deploy.py")
TARGETS = {"vit_b16_h100_images_per_s": 1460.0}


@dataclasses.dataclass(frozen=True)
class Part:
    key: str
    title: str
    budget_s: float  # at most this long
    min_s: float  # skipped when less than this is left of the overall limit
    jobs: tuple[tuple[str, float], ...]  # (job, share of what is left of the part's budget when it starts)


PARTS = (
    Part("environment", "1. Environment", 15, 5, (("env", 1.0),)),
    Part("parity", "2. GPU tests and parity sweep", 75, 30, (("pytest", 0.35), ("parity", 1.0))),
    Part(
        "training",
        "3. Training throughput (bf16 compute, fp32 parameters)",
        200,
        60,
        (("train-jax", 0.4), ("train-timm", 1.0)),
    ),
    Part("inference", "4. Inference throughput", 120, 40, (("infer-jax", 0.4), ("infer-timm", 1.0))),
    Part("data", "5. Input pipeline against the training step", 35, 15, (("data", 1.0),)),
)
TORCH_JOBS = ("train-timm", "infer-timm")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _job_env(dry_run: bool, job: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "vitjax-gpu-bench-jax-cache"))
    if dry_run or job in TORCH_JOBS or job == "data":
        env["JAX_PLATFORMS"] = "cpu"  # JAX only makes the timm jobs' weights; the GPU stays torch's
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run_process(cmd: list[str], env: dict, deadline: float, log_path: Path) -> dict:
    """Runs ``cmd`` in its own process group until it exits or ``deadline + GRACE_S``; never raises."""
    start = time.perf_counter()
    timeout = max(1.0, deadline + GRACE_S - time.time())
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    return {"rc": rc, "timed_out": timed_out, "wall_s": time.perf_counter() - start, "log_tail": tail}


def run_job(job: str, deadline: float, dry_run: bool, logs: Path) -> dict:
    out = logs / f"{job}.jsonl"
    out.unlink(missing_ok=True)
    args = json.dumps({"deadline": deadline, "toy": dry_run})
    cmd = [sys.executable, "-m", "benchmarks.gpu_parts", job, args, str(out)]
    info = _run_process(cmd, _job_env(dry_run, job), deadline, logs / f"{job}.log")
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    info["finished"] = any(r.get("item") == "done" for r in records)
    return {"process": info, "records": [r for r in records if r.get("item") != "done"]}


def run_gpu_tests(deadline: float, dry_run: bool, logs: Path) -> dict:
    """``pytest -m gpu`` over the test files that hold gpu-marked tests and can import here."""
    if missing("pytest"):
        return {"process": None, "records": [{"item": "pytest", "skipped": "pytest is not installed"}]}
    files, records = [], []
    for path in GPU_TEST_FILES:
        if path.startswith("tests/interop") and (dry_run or missing("paddle")):
            why = "dry run (their conftest imports Paddle: ~40 s)" if dry_run else "paddlepaddle is not installed"
            records.append({"item": "pytest", "file": path, "skipped": f"Paddle GPU/TensorRT tests not run: {why}"})
        else:
            files.append(path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    info = _run_process(cmd, _job_env(dry_run, "pytest"), deadline, logs / "pytest.log")
    summary = next(
        (line for line in reversed(info["log_tail"]) if re.search(r"\d+ (passed|skipped|failed|error)", line)), ""
    )
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected)", summary)}
    ok = info["rc"] in (0, 5) and not info["timed_out"]  # 5: nothing selected
    info["finished"] = ok
    records.append({"item": "pytest", "files": files, "summary": summary.strip("= "), "counts": counts, "ok": ok})
    return {"process": info, "records": records}


def run_part(part: Part, overall_deadline: float, dry_run: bool, logs: Path, have_torch: bool) -> dict:
    left = overall_deadline - time.time()
    result = {"title": part.title, "budget_s": part.budget_s, "jobs": {}, "records": []}
    if left < part.min_s:
        used = LIMIT_S - left
        result.update(
            status="skipped",
            reason=f"earlier parts ran long: {used:.0f} s used, {left:.0f} s left of the {LIMIT_S:.0f} s limit, "
            f"under this part's minimum of {part.min_s:.0f} s",
            wall_s=0.0,
        )
        return result
    start = time.time()
    part_deadline = start + min(part.budget_s, left)
    for job, share in part.jobs:
        if job in TORCH_JOBS and not have_torch:
            result["records"].append(
                {"item": job, "engine": "timm", "skipped": "torch/timm are not installed: no timm peer in this run"}
            )
            continue
        now = time.time()
        deadline = min(part_deadline, now + share * (part_deadline - now))
        _log(f"{part.key}: {job} (until +{deadline - now:.0f} s)")
        try:
            ran = run_gpu_tests(deadline, dry_run, logs) if job == "pytest" else run_job(job, deadline, dry_run, logs)
        except Exception as e:  # the driver's own failure on one job: recorded, the part goes on
            ran = {"process": {"rc": None, "finished": False, "error": f"{type(e).__name__}: {e}"}, "records": []}
        result["jobs"][job] = ran["process"]
        result["records"] += ran["records"]
    result["wall_s"] = time.time() - start
    result["status"], result["reason"] = _status(result)
    return result


def _status(result: dict) -> tuple[str, str]:
    problems = []
    for job, proc in result["jobs"].items():
        if proc is None:
            continue
        if proc.get("timed_out"):
            problems.append(("partial", f"{job} ran past its deadline and was stopped"))
        elif not proc.get("finished"):
            problems.append(("failed", f"{job} exited with {proc.get('rc')} ({proc.get('error') or 'see its log'})"))
    for r in result["records"]:
        if "error" in r:
            problems.append(("failed", f"{r.get('model', r['item'])} {r.get('engine', '')}: {r['error']}"))
        elif "budget" in r.get("skipped", ""):
            problems.append(("partial", f"{r.get('model', '')} {r.get('engine', '')} skipped: {r['skipped']}"))
        elif r.get("item") == "pytest" and r.get("ok") is False:
            problems.append(("failed", f"gpu tests: {r.get('summary')}"))
    if not result["records"]:
        problems.append(("failed", "no results"))
    if not problems:
        return "ok", ""
    status = "failed" if any(s == "failed" for s, _ in problems) else "partial"
    return status, "; ".join(text for _, text in problems[:6])


# --------------------------------------------------------------------------- derived numbers


def _records(report: dict, part: str, item: str | None = None) -> list[dict]:
    records = report["parts"].get(part, {}).get("records", [])
    return [r for r in records if item is None or r.get("item") == item]


def device_name(report: dict) -> str:
    jax_rec = next(iter(_records(report, "environment", "jax")), {})
    return jax_rec.get("device_kind", "unknown") if jax_rec.get("platform") not in (None, "cpu") else "CPU"


def add_derived(report: dict) -> None:
    """MFU per training row, and the loader's img/s against each training step's consumption."""
    name = device_name(report)
    peak, peak_rule = bf16_peak(name) if name != "CPU" else (None, "unknown peak: no GPU (CPU stand-in)")
    report["peak"] = {"bf16_dense_flops": peak, "rule": peak_rule, "mfu_formula": MFU_FORMULA}
    for r in _records(report, "training", "train"):
        if "images_per_s" in r and r.get("macs"):
            r["flops_per_image"] = train_flops_per_image(r["macs"])
            r["mfu"] = r["images_per_s"] * r["flops_per_image"] / peak if peak else None
    loader = next((r for r in _records(report, "data", "loader") if "images_per_s" in r), None)
    consumed = [
        r for r in _records(report, "training", "train") if r.get("engine") == "jax-bf16" and "images_per_s" in r
    ]
    if loader and "data" in report["parts"]:
        report["parts"]["data"]["against_training"] = [
            {
                "model": r["model"],
                "step_images_per_s": r["images_per_s"],
                "loader_over_step": loader["images_per_s"] / r["images_per_s"],
            }
            for r in consumed
        ]


# --------------------------------------------------------------------------- markdown


def _f(value, fmt: str = ".1f", none: str = "n/a") -> str:
    return none if value is None else format(value, fmt)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _skips(records: list[dict]) -> list[str]:
    return [
        f"- {r.get('model', '')} {r.get('engine', r.get('file', ''))} {r.get('batch', '')}: "
        f"{'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}".replace("  ", " ")
        for r in records
        if "skipped" in r or "error" in r
    ]


def md_environment(report: dict, part: dict) -> list[str]:
    host = next(iter(_records(report, "environment", "host")), {})
    jax_rec = next(iter(_records(report, "environment", "jax")), {})
    torch_rec = next(iter(_records(report, "environment", "torch")), {})
    smi = host.get("nvidia_smi", {})
    gpus = smi.get("gpus") or []
    rows = [
        [
            "GPU (nvidia-smi)",
            "; ".join(f"{g.get('name')} ({g.get('memory.total')})" for g in gpus) or smi.get("reason", "none"),
        ],
        ["driver", gpus[0].get("driver_version") if gpus else "n/a"],
        ["CUDA (driver API, nvidia-smi)", smi.get("cuda_driver_api") or "n/a"],
        ["JAX devices", ", ".join(jax_rec.get("devices", [])) or "n/a"],
        ["JAX device memory limit", _f((jax_rec.get("memory_limit_bytes") or 0) / 2**30 or None, ".1f") + " GiB"],
        ["torch CUDA / cuDNN", f"{torch_rec.get('cuda')} / {torch_rec.get('cudnn')}" if torch_rec else "n/a"],
        ["torch device", torch_rec.get("device", torch_rec.get("skipped", "n/a"))],
        ["CPU", f"{host.get('cpu')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB"],
        ["Python", host.get("python")],
    ]
    rows += [[name, version or "not installed"] for name, version in (host.get("versions") or {}).items()]
    return _table(["", ""], rows)


def md_parity(report: dict, part: dict) -> list[str]:
    lines = []
    for r in _records(report, "parity", "pytest"):
        if "summary" in r:
            lines.append(f"GPU tests (`pytest -m gpu {' '.join(r['files'])}`): {r['summary'] or 'no summary line'}.")
    setup = next(iter(_records(report, "parity", "setup")), {})
    if setup:
        tol = setup["tolerances"]
        lines += [
            "",
            f"Parity on `{setup['device']}`{' (the CPU stands in for the GPU: dry run)' if setup['stand_in'] else ''}. "
            f"Error = max |logits(GPU) - logits(CPU)| / max |logits(CPU)|, random weights and images. Tolerances: "
            f"{tol['highest']:g} at `highest` precision (true fp32: summation order only), {tol['default']:g} at "
            f"XLA's default precision (TF32 on Ampere and newer: a 10-bit mantissa). Default precision measured as "
            f"TF32 here: {'yes' if setup['default_precision_is_tf32'] else 'no'} "
            f"(1024^3 matmul, default vs highest: {setup['default_vs_highest_matmul_rel']:.1e}).",
            "bf16 (compute) against fp32 on scikit-image's photos: *decisive* images are those whose fp32 top-1 "
            "margin exceeds twice the largest bf16 logit difference; all of them must agree.",
            "",
        ]
    rows = []
    for r in _records(report, "parity", "model"):
        if "rel_error" not in r:
            continue
        e, p = r["rel_error"], r["passed"]
        rows.append(
            [
                r["model"],
                f"{e['default']:.1e} ({'pass' if p['default'] else 'FAIL'})",
                f"{e['highest']:.1e} ({'pass' if p['highest'] else 'FAIL'})",
                f"{r['bf16_top1_agree']}/{r['photos']}",
                f"{r['bf16_decisive_agree']}/{r['bf16_decisive']} ({'pass' if r['bf16_passed'] else 'FAIL'})",
                f"{r['bf16_max_logit_diff']:.2e}",
                f"{r['fp32_median_margin']:.2e}",
            ]
        )
    header = [
        "Model",
        "GPU vs CPU, default",
        "GPU vs CPU, highest",
        "bf16 top-1 = fp32",
        "decisive agree",
        "max bf16 Δ",
        "median fp32 margin",
    ]
    return lines + _table(header, rows) + [""] + _skips(_records(report, "parity"))


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def md_training(report: dict, part: dict) -> list[str]:
    peak = report.get("peak", {})
    lines = [f"Peak: {peak.get('rule')}. {peak.get('mfu_formula')}.", ""]
    rows = []
    recs = [r for r in _records(report, "training", "train") if "images_per_s" in r]
    for r in recs:
        compiled = next((c for c in recs if c["model"] == r["model"] and c["engine"] == "timm-compile-amp"), None)
        rows.append(
            [
                r["model"],
                r["engine"],
                f"{r['batch']}" + (f" (OOM at {r['batches_out_of_memory']})" if r["batches_out_of_memory"] else ""),
                f"{r['images_per_s']:.1f}",
                f"{r['ms_per_step']:.1f}",
                f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a",
                _f((r.get("device_peak_bytes") or 0) / 2**30 or None, ".1f"),
                " ".join(f"{x:.4f}" for x in r.get("first_losses", [])),
                _ratio(r["images_per_s"], compiled and compiled["images_per_s"]),
            ]
        )
    header = ["Model", "Engine", "Batch", "img/s", "ms/step", "MFU", "peak GiB", "first losses", "/ timm compile"]
    lines += _table(header, rows)
    jax_ips = {r["model"]: r["images_per_s"] for r in recs if r["engine"] == "jax-bf16"}
    comp_ips = {r["model"]: r["images_per_s"] for r in recs if r["engine"] == "timm-compile-amp"}
    base, small, tnt = "DeiT_base_patch16_224", "DeiT_small_patch16_224", "TNT_small"
    lines += [
        "",
        "Targets (issue 24):",
        f"- DeiT-base ≥ 1.0x timm torch.compile: {_ratio(jax_ips.get(base), comp_ips.get(base))}",
        f"- DeiT-base ≥ {TARGETS['vit_b16_h100_images_per_s']:.0f} img/s on an H100: {_f(jax_ips.get(base))} img/s on {device_name(report)}",
        f"- TNT_small ≥ 0.5x DeiT-small (JAX): {_ratio(jax_ips.get(tnt), jax_ips.get(small))}",
    ]
    return lines + [""] + _skips(_records(report, "training"))


INFER_ENGINES = (
    "jax-fp32",
    "jax-bf16",
    "timm-eager-fp32",
    "timm-eager-bf16",
    "timm-compile-bf16",
    "timm-compile-fp32",
)


def md_inference(report: dict, part: dict) -> list[str]:
    recs = [r for r in _records(report, "inference", "infer") if "images_per_s" in r]
    cells = {(r["model"], r["batch"], r["engine"]): r for r in recs}
    rows = []
    for model, batch in sorted({(r["model"], r["batch"]) for r in recs}, key=lambda k: (k[0], k[1])):
        row = [model, batch]
        for e in INFER_ENGINES:
            c = cells.get((model, batch, e))
            row.append(f"{c['images_per_s']:.1f} ({c['ms_per_call']:.2f} ms)" if c else "n/a")
        best_bf16 = max(
            (cells[(model, batch, e)]["images_per_s"] for e in INFER_ENGINES[3:5] if (model, batch, e) in cells),
            default=None,
        )
        ours = cells.get((model, batch, "jax-bf16"))
        row.append(_ratio(ours and ours["images_per_s"], best_bf16))
        rows.append(row)
    lines = [
        "Images/s (ms per call). fp32 rows run TF32 matmuls where the GPU has them on both sides (JAX's default "
        "precision, torch `set_float32_matmul_precision('high')`); bf16: JAX `dtype=bfloat16`, timm autocast.",
        "",
    ]
    return (
        lines
        + _table(["Model", "Batch", *INFER_ENGINES, "JAX bf16 / best timm bf16"], rows)
        + [""]
        + _skips(_records(report, "inference"))
    )


def md_data(report: dict, part: dict) -> list[str]:
    loader = next((r for r in _records(report, "data", "loader") if "images_per_s" in r), None)
    if loader is None:
        return _skips(_records(report, "data"))
    lines = [
        f"Recipe: {loader['recipe']}; {loader['images']} JPEGs of {loader['image_size'][0]}x{loader['image_size'][1]}, "
        f"batch {loader['batch']}, {loader['workers']} {loader['worker_kind']} workers on {loader['cores']} cores: "
        f"**{loader['images_per_s']:.1f} img/s** (warm-up {loader['warmup_s']:.1f} s).",
        "",
    ]
    rows = [
        [
            a["model"],
            f"{a['step_images_per_s']:.1f}",
            f"{a['loader_over_step']:.2f}x",
            "yes" if a["loader_over_step"] >= 1 else "no",
        ]
        for a in part.get("against_training", [])
    ]
    return lines + _table(["Model (JAX bf16 step)", "step consumes img/s", "loader / step", "loader keeps up"], rows)


RENDER = {
    "environment": md_environment,
    "parity": md_parity,
    "training": md_training,
    "inference": md_inference,
    "data": md_data,
}


def render_markdown(report: dict) -> str:
    mode = "dry run, toy sizes, the CPU standing in for the GPU" if report["dry_run"] else "GPU run"
    lines = [
        f"# GPU benchmark: {device_name(report)}",
        "",
        f"`{report['command']}` ({mode}), {report['started']}, {report['wall_s']:.0f} s of a {report['limit_s']:.0f} s limit; "
        f"host {report['host']}.",
        "",
        _row(["Part", "Status", "Budget s", "Wall s", "Reason"]),
        _row(["---"] * 5),
    ]
    for part in report["parts"].values():
        lines.append(
            _row(
                [
                    part["title"],
                    part["status"],
                    f"{part['budget_s']:.0f}",
                    f"{part['wall_s']:.0f}",
                    part.get("reason", ""),
                ]
            )
        )
    for key, part in report["parts"].items():
        lines += ["", f"## {part['title']}", ""]
        if part["status"] == "skipped":
            lines.append(f"Skipped: {part['reason']}")
            continue
        try:
            lines += RENDER[key](report, part)
        except Exception as e:  # a rendering bug must not lose the JSON
            lines.append(f"(could not render this part: {type(e).__name__}: {e}; see the JSON report)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- completeness


def check_complete(report: dict, markdown: str) -> list[str]:
    """What a complete report lacks (empty when complete): every part ran without failure and has its rows."""
    sizes = Sizes.toy() if report["dry_run"] else Sizes.full()
    problems = []
    for part in PARTS:
        got = report["parts"].get(part.key)
        if got is None:
            problems.append(f"{part.key}: missing")
            continue
        if got["status"] != "ok":
            problems.append(f"{part.key}: {got['status']} ({got.get('reason')})")
        if f"## {part.title}" not in markdown:
            problems.append(f"{part.key}: not in the markdown")
    if "(could not render this part" in markdown:
        problems.append("markdown: a part could not be rendered")
    has = lambda part, item, **kw: any(  # noqa: E731
        all(r.get(k) == v for k, v in kw.items())
        and ("skipped" in r or any(k in r for k in ("images_per_s", "rel_error", "python", "backend")))
        for r in _records(report, part, item)
    )
    for item in ("host", "jax"):
        if not has("environment", item):
            problems.append(f"environment: no {item} record")
    for model in sizes.parity_models:
        if not has("parity", "model", model=model):
            problems.append(f"parity: no row for {model}")
    timm = not any(r.get("engine") == "timm" for r in _records(report, "training"))
    for model in sizes.train_models:
        for engine in ("jax-bf16", *(("timm-eager-amp", "timm-compile-amp") if timm else ())):
            if not has("training", "train", model=model, engine=engine):
                problems.append(f"training: no {engine} row for {model}")
    for model in sizes.infer_models:
        for batch in sizes.infer_batches:
            for engine in INFER_ENGINES if timm else INFER_ENGINES[:2]:
                if not has("inference", "infer", model=model, batch=batch, engine=engine):
                    problems.append(f"inference: no {engine} row for {model} at batch {batch}")
    if not has("data", "loader"):
        problems.append("data: no loader row")
    return problems


# --------------------------------------------------------------------------- command line


def plan_text(dry_run: bool) -> str:
    sizes = Sizes.toy() if dry_run else Sizes.full()
    lines = [
        f"python -m benchmarks.gpu{' --dry-run' if dry_run else ''}: {len(PARTS)} parts, at most {LIMIT_S:.0f} s "
        f"({'toy sizes on the CPU' if dry_run else 'on the GPU'}); each part's budget, and the minimum left below which it is skipped:",
        "",
    ]
    what = {
        "environment": "GPU, driver, CUDA, library versions",
        "parity": f"pytest -m gpu {' '.join(GPU_TEST_FILES)}; {len(sizes.parity_models)} models fp32 GPU vs CPU "
        f"(batch {sizes.parity_batch}), bf16 vs fp32 top-1 on {sizes.photos} photos",
        "training": f"{', '.join(sizes.train_models)}: JAX bf16, timm eager and torch.compile AMP bf16 "
        f"(backend {sizes.compile_backend}), batch {sizes.train_batch} (halved on OOM), {sizes.train_warmup} warm-up steps, "
        f"chunks of {sizes.train_steps} steps for ~{sizes.train_seconds:g} s",
        "inference": f"{', '.join(sizes.infer_models)} at batch {', '.join(map(str, sizes.infer_batches))}: "
        f"{', '.join(INFER_ENGINES)}",
        "data": f"DeiT recipe loader on this machine's cores, {sizes.loader_images} JPEGs, batch {sizes.loader_batch}",
    }
    for part in PARTS:
        jobs = ", ".join(f"{j} ({'rest' if s == 1.0 else f'{s:.0%}'})" for j, s in part.jobs)
        lines.append(f"{part.title}: budget {part.budget_s:.0f} s, skipped under {part.min_s:.0f} s left; jobs {jobs}")
        lines.append(f"    {what[part.key]}")
    lines.append(f"\nTotal of the budgets: {sum(p.budget_s for p in PARTS):.0f} s.")
    absent = missing("jax", "flax", "optax", "grain", "ml_collections", "skimage", "torch", "timm", "pytest")
    lines.append(f"Modules missing here: {', '.join(absent) if absent else 'none'} (requirements/gpu-carry.txt).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print what would run and each part's budget, then exit")
    parser.add_argument("--dry-run", action="store_true", help="every part at toy sizes on the CPU; check the report")
    parser.add_argument(
        "--out", type=Path, default=None, help="report stem (default benchmarks/results/gpu/latest or dry-run)"
    )
    parser.add_argument("--force", action="store_true", help="run the full sizes even where nvidia-smi lists no GPU")
    args = parser.parse_args(argv)
    if args.plan:
        print(plan_text(args.dry_run))
        return 0
    from benchmarks.machine import gpu_names

    if not args.dry_run and not args.force and not gpu_names():
        print(
            "no GPU (nvidia-smi lists none): run --dry-run here, or --force to run the full sizes anyway",
            file=sys.stderr,
        )
        return 2
    stem = args.out or RESULTS / ("dry-run" if args.dry_run else "latest")
    stem.parent.mkdir(parents=True, exist_ok=True)
    logs = stem.parent / f"{stem.name}-logs"
    logs.mkdir(exist_ok=True)
    have_torch = not missing("torch", "timm")
    started = time.time()
    deadline = started + LIMIT_S
    report = {
        "command": "python -m benchmarks.gpu" + (" --dry-run" if args.dry_run else ""),
        "dry_run": args.dry_run,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "limit_s": LIMIT_S,
        "host": platform.node(),
        "parts": {},
    }
    for part in PARTS:
        _log(f"part {part.title}")
        try:
            report["parts"][part.key] = run_part(part, deadline, args.dry_run, logs, have_torch)
        except Exception as e:
            report["parts"][part.key] = {
                "title": part.title,
                "budget_s": part.budget_s,
                "wall_s": 0.0,
                "records": [],
                "jobs": {},
                "status": "failed",
                "reason": f"driver: {type(e).__name__}: {e}",
            }
        _log(f"part {part.key}: {report['parts'][part.key]['status']} {report['parts'][part.key].get('reason', '')}")
    report["wall_s"] = time.time() - started
    add_derived(report)
    markdown = render_markdown(report)
    report["incomplete"] = check_complete(report, markdown)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    _log(f"wrote {stem.with_suffix('.md')} and .json ({report['wall_s']:.0f} s)")
    if report["incomplete"]:
        _log("report incomplete:\n  " + "\n  ".join(report["incomplete"]))
        return 1 if args.dry_run else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
