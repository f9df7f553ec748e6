"""Markdown rendering of a benchmark report (``benchmarks/run.py`` writes the JSON beside it)."""

from __future__ import annotations

from benchmarks.worker import INFERENCE_ENGINES, TRAIN_ENGINES

ENGINE_TITLES = {
    "jax": "JAX fp32 (ours)",
    "jax-xla": "JAX fp32, XLA's matmuls (ours)",
    "jax-unpinned": "JAX fp32, threads unpinned (ours)",
    "jax-vw512": "JAX fp32, 512-bit vectors (ours)",
    "jax-bf16": "JAX bf16 (ours)",
    "paddle-inference": "Paddle Inference (oneDNN)",
    "onnxruntime": "ONNX Runtime",
    "paddle-dygraph": "Paddle dygraph",
    "jax-train": "JAX (ours)",
    "jax-xla-train": "JAX, XLA's matmuls (ours)",
    "paddle-dygraph-train": "Paddle dygraph",
    "timm": "timm eager",
    "timm-compile": "timm torch.compile",
    "timm-train": "timm eager",
    "timm-compile-train": "timm torch.compile",
}
LOSS_LABELS = {"jax-train": "JAX", "jax-xla-train": "JAX (XLA)", "paddle-dygraph-train": "Paddle", "timm-train": "timm"}
# "JAX / best peer" compares our default path with the fastest engine that is not ours.
PEERS = tuple(e for e in INFERENCE_ENGINES if not e.startswith("jax"))


def _allocator_line(allocator: str) -> str:
    if allocator == "default":
        return (
            "the system malloc (glibc); our JAX engines keep freed buffers for reuse (`mallopt`, as vitjax's "
            "entry points do: vitjax.hostmem), the peers run on glibc as it comes"
        )
    if allocator == "system":
        return "the system malloc (glibc) as it comes, in every engine's process (`VITJAX_MALLOC=system`)"
    return f"`LD_PRELOAD={allocator}` in every engine's process"


def _fmt_rate(c: dict | None) -> str:
    if not c:
        return "n/a"
    return f"{c['images_per_s']:.1f} ({c['median_ms']:.1f} ms)"


def _ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a['images_per_s'] / b['images_per_s']:.2f}x"


def _kernels_used(section: dict, engine: str) -> str:
    """The matmul kernel(s) ``engine`` (ours, ``matmul="auto"``) resolved to in a report section, or ""."""
    used = {e["engines"][engine].get("matmul", "?") for e in section.values() if engine in e.get("engines", {})}
    return " / ".join(sorted(used))


def _train_matmul_note(training: dict) -> str:
    used = _kernels_used(training, "jax-train")
    return (
        (
            f' "JAX (ours)" is vitjax\'s default training path (`model.matmul=auto`), here with {used} matmuls'
            ' for the dense layers; "XLA\'s matmuls" is the same step with `model.matmul=xla`.'
        )
        if used
        else ""
    )


def _inference_matmul_note(models: dict) -> str:
    used = _kernels_used(models, "jax")
    fused = " (on oneDNN, each block's attention is one fused call: q k^T, softmax and P v)" if used == "onednn" else ""
    return (
        (
            f'; its dense and attention matmuls on {used} (`matmul="auto"`){fused}, '
            '"XLA\'s matmuls" is the same predictor with `matmul="xla"`'
        )
        if used
        else ""
    )


def _variant_notes(report: dict, ran: set[str]) -> str:
    """What our JAX columns are, naming only the variants that ran."""
    pinned = report["settings"].get("jax_pin_threads")
    notes = (
        "; XLA's CPU worker threads pinned one per core (the predictor's default on CPU, `vitjax.cpu_threads`)"
        if pinned
        else "; XLA's CPU worker threads not pinned"
    )
    if pinned and "jax-unpinned" in ran:
        notes += ', "threads unpinned" is the same with `pin_threads=False`'
    notes += _inference_matmul_note(report["models"])
    if "jax-vw512" in ran:
        notes += (
            '; "512-bit vectors" with `XLA_FLAGS=--xla_cpu_prefer_vector_width=512` '
            "(XLA's CPU backend emits 256-bit loops by default)"
        )
    if "jax-bf16" in ran:
        notes += "; bf16 computes in bfloat16 with float32 parameters"
    return notes


def _gib(x):
    return "n/a" if x is None else f"{x:.0f}"


def render_markdown(report: dict) -> str:
    m = report["machine"]
    peak = m["peak_fp32_flops"]
    ran = {e for entry in report["models"].values() for c in entry.get("cells", {}).values() for e in c["engines"]}
    lines = [
        f"# vitjax benchmarks ({report['date']})",
        "",
        f"- Command: `{report['command']}`"
        + (f" with `XLA_FLAGS={report['xla_flags']}`" if report.get("xla_flags") else ""),
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['isa']}"
        + (", AVX512-BF16" if m.get("avx512_bf16") else "")
        + f", clock {m['clock_used_ghz']:.2f} GHz"
        + (
            f" measured (nominal {m['clock_nominal_ghz']:.2f} GHz)"
            if m.get("clock_measured_ghz") and m.get("clock_nominal_ghz")
            else ""
        )
        + f", {m['memory_gib']} GiB RAM; device: {report['device']}"
        + (f" ({', '.join(m['gpus'])})" if m.get("gpus") else ""),
        f"- Threads: {report['threads']} for every engine (XLA's CPU pool, Paddle `set_cpu_math_library_num_threads`, "
        "ORT `intra_op_num_threads` with `inter_op_num_threads=1` and `ORT_ENABLE_ALL`, dygraph `set_num_threads` + OMP)",
        "- Host allocator: " + _allocator_line(report.get("allocator", "default")),
        f"- FP32 peak: {m['peak_derivation']}; {m['fma_pipes_rule']}."
        + (
            f" Empirical ceiling: one 2048x2048x2048 matmul under XLA reaches {m['xla_matmul_2048_flops'] / 1e9:.0f} GFLOP/s "
            f"({m['xla_matmul_2048_flops'] / peak:.0%} of peak)."
            if m.get("xla_matmul_2048_flops")
            else ""
        ),
        "- Our JAX path: interop's `JaxPredictor` (jit, NCHW in, logits out) with XLA's defaults"
        + _variant_notes(report, ran)
        + ". Ratios to peers use the default fp32 path.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- Method: same random weights in every engine (our Flax init -> Paddle export -> Paddle2ONNX); one process per "
        f"engine; per (model, batch) cell, {report['settings']['warmup']} warm-up calls per engine (compilation included) are "
        f"excluded, then up to {report['settings']['repeats']} rounds (at least 5; fewer only where a round would overrun "
        f"{report['settings'].get('cell_budget_s', 0):.0f} s) time one call of each engine in rotated order, "
        f"{report['settings'].get('gap_ms', 0):.0f} ms apart so no engine's spinning threads overlap the next call; medians reported "
        "(rounds per cell in the JSON). "
        "Numpy NCHW float32 in, numpy logits out, for every engine.",
        "",
        "## Inference throughput, images/s (median latency)",
        "",
    ]
    engines = [e for e in INFERENCE_ENGINES if e in ran]
    lines.append(
        "| Model | Batch | "
        + " | ".join(ENGINE_TITLES[e] for e in engines)
        + " | JAX / best peer | JAX / ORT | JAX / Paddle Inf. | JAX % of FP32 peak |"
    )
    lines.append("|:--|--:|" + "--:|" * len(engines) + "--:|--:|--:|--:|")
    flagged = []
    for model, entry in report["models"].items():
        for batch, cell_info in entry.get("cells", {}).items():
            cell = cell_info["engines"]
            if cell_info.get("busy"):
                flagged.append(f"{model} b{batch}")
            peers = [cell[p] for p in PEERS if p in cell]
            best = max(peers, key=lambda c: c["images_per_s"]) if peers else None
            jax = cell.get("jax")
            frac = "n/a"
            if jax:
                frac = f"{2 * entry['macs_per_image'] * jax['images_per_s'] / peak:.0%}"
            lines.append(
                f"| {model} | {batch} | "
                + " | ".join(_fmt_rate(cell.get(e)) for e in engines)
                + f" | {_ratio(jax, best)} | {_ratio(jax, cell.get('onnxruntime'))} | {_ratio(jax, cell.get('paddle-inference'))} | {frac} |"
            )
    lines += [
        "",
        "FLOPs counted as 2 x the model's multiply-accumulates including the attention matmuls "
        "(`vitjax.models.complexity`); softmax, GELU and LayerNorm are not counted.",
        "",
    ]

    if report.get("training"):
        lines += [
            "## Training step, images/s (median ms per step): forward + backward + AdamW",
            "",
            "| Model | Batch | "
            + " | ".join(ENGINE_TITLES[e] for e in TRAIN_ENGINES)
            + " | JAX / dygraph | JAX / timm eager | JAX / timm compile | JAX % of FP32 peak | loss, 3 steps |",
            "|:--|--:|" + "--:|" * len(TRAIN_ENGINES) + "--:|--:|--:|--:|:--|",
        ]
        for model, entry in report["training"].items():
            for batch, cell_info in entry.get("cells", {}).items():
                cell = cell_info["engines"]
                if cell_info.get("busy"):
                    flagged.append(f"{model} train b{batch}")
                jax, pd = cell.get("jax-train"), cell.get("paddle-dygraph-train")
                tm, tc = cell.get("timm-train"), cell.get("timm-compile-train")
                frac = f"{6 * entry['macs_per_image'] * jax['images_per_s'] / peak:.0%}" if jax else "n/a"
                check = entry.get("check", {}).get(batch, {})
                losses = check.get("losses", {})
                loss_txt = "; ".join(
                    f"{LOSS_LABELS[e]} " + ", ".join(f"{v:.4f}" for v in losses[e]) for e in LOSS_LABELS if e in losses
                )
                lines.append(
                    f"| {model} | {batch} | "
                    + " | ".join(_fmt_rate(cell.get(e)) for e in TRAIN_ENGINES)
                    + f" | {_ratio(jax, pd)} | {_ratio(jax, tm)} | {_ratio(jax, tc)} | {frac} | {loss_txt} |"
                )
        lines += [
            "",
            "Same weights, same batch (224x224, random labels), cross-entropy, AdamW (lr 1e-4, weight decay 0.05 on "
            "every parameter, as Paddle's AdamW), no dropout or drop path (the Paddle mirror has none). Training FLOPs "
            "counted as 3 x forward." + _train_matmul_note(report["training"]),
            "",
        ]

    lines += ["## Peak memory (MiB): peak RSS of each engine's process, up to and including that batch", ""]
    lines.append("| Model | Batch | " + " | ".join(ENGINE_TITLES[e] for e in engines) + " |")
    lines.append("|:--|--:|" + "--:|" * len(engines))
    for model, entry in report["models"].items():
        for batch, cell_info in entry.get("cells", {}).items():
            cell = cell_info["engines"]
            lines.append(
                f"| {model} | {batch} | "
                + " | ".join(
                    _gib(cell[e]["peak_rss_mib"])
                    + ("" if cell[e].get("device_peak_mib") is None else f" / GPU {cell[e]['device_peak_mib']:.0f}")
                    if e in cell
                    else "n/a"
                    for e in engines
                )
                + " |"
            )
    if report.get("training"):
        lines += [
            "",
            "| Model (training step) | Batch | " + " | ".join(ENGINE_TITLES[e] for e in TRAIN_ENGINES) + " |",
            "|:--|--:|" + "--:|" * len(TRAIN_ENGINES),
        ]
        for model, entry in report["training"].items():
            for batch, cell_info in entry.get("cells", {}).items():
                cell = cell_info["engines"]
                lines.append(
                    f"| {model} | {batch} | "
                    + " | ".join(_gib(cell[e]["peak_rss_mib"]) if e in cell else "n/a" for e in TRAIN_ENGINES)
                    + " |"
                )
    lines += ["", "RSS includes each runtime's own libraries and the process's own copy of the weights.", ""]

    lines += [
        "## Outputs agree (checked before timing)",
        "",
        "| Model | " + " | ".join(ENGINE_TITLES[e] for e in engines) + " |",
        "|:--|" + "--:|" * len(engines),
    ]
    for model, entry in report["models"].items():
        check = entry.get("check", {})
        lines.append(
            f"| {model} | "
            + " | ".join(f"{check[e]['max_abs_diff_vs_jax_fp32']:.1e}" if e in check else "n/a" for e in engines)
            + " |"
        )
    lines += [
        "",
        f"Max |logits - JAX fp32 logits| on a batch of 2; fp32 engines must be <= {report['settings']['fp32_atol']:g}.",
        "",
    ]
    if flagged or report.get("busy_at_start"):
        lines += [
            "**Note:** other heavy jobs ran during: "
            + ", ".join(flagged or ["the start of the run"])
            + "; those numbers may be low.",
            "",
        ]
    return "\n".join(lines) + "\n"
