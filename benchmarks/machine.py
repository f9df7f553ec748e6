"""What machine the benchmark ran on, and its FP32 peak FLOP/s.

Theoretical peak = cores x FMA pipes per core x FP32 lanes per FMA x 2 FLOP per FMA x clock.

* cores: the CPUs this process may run on (``os.sched_getaffinity``).
* lanes: what one FMA pipe computes per cycle: 16 fp32 with AVX-512F on 512-bit datapaths, 8 with
  AVX2/FMA3, from ``/proc/cpuinfo`` flags; AMD Zen 4 (family 0x19 with AVX-512F) accepts 512-bit
  instructions but executes each on 256-bit datapaths in two halves, so it counts 8.
* FMA pipes per core: not visible in any flag; taken from the microarchitecture (AMD family
  0x1A Zen 5 and 0x19 Zen 3/4, Intel server cores with AVX-512: 2), overridable with
  ``--fma-pipes``; a row in the report says which rule was used.
* clock: a VM's ``/proc/cpuinfo`` shows the nominal (TSC) clock while the core boosts, so we
  also *measure* the clock with a chain of dependent integer multiplies (3 cycles each on
  every x86 core since 2006), compiled with ``cc`` when one is present, and use the
  measured clock when available.

An empirical ceiling is measured too: the FLOP/s of one large float32 matmul under XLA.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  struct timespec a, b; long n = 200000000; long x = 3; double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
      __asm__ volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t" : "+r"(x));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    double ghz = 3.0 * 4.0 * n / s / 1e9;  /* 4 dependent imuls per iteration, 3 cycles each */
    if (ghz > best) best = ghz;
  }
  printf("%.4f\n", best);
  return 0;
}
"""


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def measure_clock_ghz() -> float | None:
    """The core clock under load, from a dependent-imul chain; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=60).stdout
            return float(out.strip())
        except (subprocess.SubprocessError, ValueError, OSError):
            return None


def _fma_pipes(vendor: str, family: int) -> tuple[int, str]:
    if vendor == "AuthenticAMD" and family >= 0x1A:
        return 2, "AMD family 0x1A (Zen 5): 2 x 512-bit FMA pipes per core"
    if vendor == "AuthenticAMD" and family == 0x19:
        return 2, "AMD family 0x19 (Zen 3/4): 2 x 256-bit FMA pipes per core (Zen 4 runs each 512-bit FMA as 2 x 256)"
    return 2, "assumed 2 FMA pipes per core (Intel server/client cores since Haswell)"


def describe(measure_clock: bool = True, fma_pipes: int | None = None) -> dict:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    vendor = info.get("vendor_id", "")
    family = int(info.get("cpu family", "0") or 0)
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == 0x19:
        lanes, isa = 8, "AVX-512F on 256-bit FMA datapaths (Zen 4)"
    elif "avx512f" in flags:
        lanes, isa = 16, "AVX-512F (512-bit FMA)"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2 + FMA3 (256-bit FMA)"
    else:
        lanes, isa = 4, "SSE (128-bit, no FMA assumed)"
    pipes, pipes_rule = _fma_pipes(vendor, family)
    if fma_pipes is not None:
        pipes, pipes_rule = int(fma_pipes), f"{fma_pipes} FMA pipes per core (given on the command line)"
    nominal = float(info.get("cpu MHz", "0") or 0) / 1e3 or None
    measured = measure_clock_ghz() if measure_clock else None
    clock = measured or nominal or 0.0
    peak = cores * pipes * lanes * 2 * clock * 1e9
    model_name = info.get("model name", platform.processor() or "unknown")
    return {
        "cpu": model_name,
        "vendor": vendor,
        "family": family,
        "cores": cores,
        "isa": isa,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "fp32_lanes": lanes,
        "fma_pipes": pipes,
        "fma_pipes_rule": pipes_rule,
        "clock_nominal_ghz": nominal,
        "clock_measured_ghz": measured,
        "clock_used_ghz": clock,
        "peak_fp32_flops": peak,
        "peak_derivation": (
            f"{cores} cores x {pipes} FMA pipes x {lanes} fp32 lanes ({isa}) x 2 FLOP/FMA x "
            f"{clock:.2f} GHz ({'measured, dependent-imul chain' if measured else 'nominal, /proc/cpuinfo'}) "
            f"= {peak / 1e9:.0f} GFLOP/s"
        ),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
    }


def gpu_names() -> list[str]:
    """CUDA GPUs nvidia-smi reports (empty without one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def busy_processes(patterns=("pytest", "vitjax.main", "benchmarks.run")) -> list[str]:
    """Other heavy jobs that would skew a timing run (best effort, Linux only)."""
    me, found = os.getpid(), []
    parents = {me, os.getppid()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            if pid in parents:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if (
            cmd
            and any(re.search(rf"(^|[ /]){re.escape(p)}\b", cmd) for p in patterns)
            and "benchmarks.worker" not in cmd
        ):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")
