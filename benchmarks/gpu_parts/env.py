"""Part 1, the environment: the GPU, its driver and CUDA, and the versions of everything timed."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess

from benchmarks.gpu_parts.common import Recorder, Sizes

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "torch",
    "timm",
    "grain",
    "numpy",
)


def nvidia_smi() -> dict:
    """Name, memory and driver of every GPU ``nvidia-smi`` lists, and the CUDA version its header gives."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"available": False, "reason": "nvidia-smi not on PATH"}
    query = "name,memory.total,driver_version,power.limit,clocks.max.sm"
    try:
        rows = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        ).stdout
        header = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"available": False, "reason": f"nvidia-smi failed: {e}"}
    gpus = [dict(zip(query.split(","), (c.strip() for c in line.split(",")))) for line in rows.splitlines() if line]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"available": True, "gpus": gpus, "cuda_driver_api": cuda.group(1) if cuda else None}


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def run(args: dict, rec: Recorder, sizes: Sizes) -> None:
    from benchmarks import machine

    cpu = machine.describe(measure_clock=False)
    rec.write(
        {
            "item": "host",
            "python": platform.python_version(),
            "cpu": cpu["cpu"],
            "cores": cpu["cores"],
            "memory_gib": cpu["memory_gib"],
            "kernel": cpu["kernel"],
            "versions": versions(),
            "nvidia_smi": nvidia_smi(),
            "env": {k: os.environ[k] for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION") if k in os.environ},
        }
    )
    import jax

    devices = jax.devices()
    first = devices[0]
    stats = first.memory_stats() if first.platform != "cpu" else None
    rec.write(
        {
            "item": "jax",
            "backend": jax.default_backend(),
            "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
            "device_kind": first.device_kind,
            "platform": first.platform,
            "memory_limit_bytes": int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None,
            "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        }
    )
    try:
        import torch
    except ImportError as e:
        rec.write({"item": "torch", "skipped": f"torch not importable ({e})"})
        return
    cuda = torch.cuda.is_available()
    rec.write(
        {
            "item": "torch",
            "cuda_available": cuda,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    )
