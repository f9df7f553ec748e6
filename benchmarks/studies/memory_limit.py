"""``python -m vitjax.main`` on the DeiT recipe under a memory limit: resident memory, what of it the
kernel may take back, and the step rate, for each host-allocator setting.

``python -m benchmarks.studies.memory_limit [--limit 5GiB] [--batch 32] [--steps 24] [--variants ...]``

Each variant is ``name=VAR:value+VAR:value``, as ``benchmarks.input_loop`` reads them (environment
given to ``vitjax.main``, whose own settings yield to it); the defaults are ``vitjax.main`` as it
comes and ``kept``, mimalloc told to keep every freed page resident (``MIMALLOC_PURGE_DELAY=-1``,
the setting before 2026-12-07). The
run trains ``configs/deit_tiny.py`` on a folder of generated 500x375 JPEGs (``benchmarks.timm_loop``'s)
and samples, every half second, the process's resident memory (``VmRSS``) and the part of it the
kernel may reclaim without asking (``LazyFree``: pages handed back with ``madvise(MADV_FREE)``).
With ``--limit`` each run is started inside a memory cgroup of that size (v1 or v2; needs root),
as a 12 GB Colab host or a container limits it: a run whose memory the kernel cannot take back is
killed there. Results: ``benchmarks/studies/results/memory_limit.{json,md}``, one report per limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.input_loop import parse_variants
from benchmarks.timm_loop import ROOT, source_state, write_data

OUT = Path(__file__).parent / "results"
DEFAULT_VARIANTS = "vitjax.main=,kept=MIMALLOC_PURGE_DELAY:-1"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    """``5GiB``, ``5G``, ``512MiB``, ``0`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GiB, 512MiB, 0)")
    return int(float(match[1]) * _UNITS[match[2]])


class MemoryCgroup:
    """A memory cgroup of ``limit`` bytes that a child joins before it runs (:meth:`join`); removed
    by :meth:`remove` once the child has ended."""

    def __init__(self, limit: int, name: str):
        v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
        if v1.is_dir():
            self.path, limit_file, self.procs, no_swap = (
                v1 / name,
                "memory.limit_in_bytes",
                "tasks",
                "memory.swappiness",
            )
        else:
            self.path, limit_file, self.procs, no_swap = v2 / name, "memory.max", "cgroup.procs", "memory.swap.max"
        try:
            self.path.mkdir()
        except OSError as e:
            raise SystemExit(f"--limit needs a memory cgroup this user may create (root): {e}") from None
        try:
            (self.path / limit_file).write_text(str(limit))
            if (self.path / no_swap).exists():  # no swap: reclaim or be killed
                (self.path / no_swap).write_text("0")
        except OSError as e:
            self.remove()
            raise SystemExit(
                f"cannot set a memory limit in {self.path} (is the memory controller enabled?): {e}"
            ) from None

    def join(self) -> None:  # in the child, before exec
        (self.path / self.procs).write_text(str(os.getpid()))

    def remove(self) -> None:
        for _ in range(50):  # the kernel may still be tearing down the ended child
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove the cgroup {self.path}; remove it with rmdir", file=sys.stderr)


def _memory(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, LazyFree)`` of ``pid`` in bytes, or ``None`` once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    rss = re.search(r"VmRSS:\s+(\d+) kB", status)
    lazy = re.search(r"LazyFree:\s+(\d+) kB", rollup)
    return (int(rss[1]) * 1024 if rss else 0), (int(lazy[1]) * 1024 if lazy else 0)


def run_variant(name: str, env: dict[str, str], args, data: Path, work: Path, cgroup: MemoryCgroup | None) -> dict:
    command = [
        sys.executable, "-m", "vitjax.main", "--config", str(ROOT / "configs" / "deit_tiny.py"),
        "--workdir", str(work / name), "--config.data.source=folder", f"--config.data.root={data}",
        "--config.model.num_classes=4", f"--config.batch_size={args.batch}", "--config.eval_batch_size=8",
        f"--config.num_steps={args.steps}", f"--config.log_every={args.log_every}", "--config.eval_every=0",
        "--config.plot=False",
    ]  # fmt: skip
    log = work / f"{name}.log"
    samples = []
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=cgroup.join if cgroup else None,
        )  # fmt: skip
        try:
            while process.poll() is None:
                if time.perf_counter() - start > args.timeout:
                    raise TimeoutError(f"{name}: vitjax.main ran past --timeout {args.timeout} s; see {log}")
                memory = _memory(process.pid)
                if memory:
                    samples.append((time.perf_counter() - start, *memory))
                time.sleep(0.5)
        finally:  # never leave the run (and its cgroup) behind
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    rates = [float(m[1]) for m in re.finditer(r"step \d+/\d+ .*?([\d.]+) steps/s", text)]
    steps = [int(m[1]) for m in re.finditer(r"step (\d+)/\d+", text)]
    settled = rates[len(rates) // 2 :]  # the second half: past the compile and the heap's first growth
    allocator = re.search(r"host memory: (.+)", text)  # as vitjax.main logs it
    return {
        "environment": env,
        "allocator": allocator[1].strip() if allocator else "not logged",
        "returncode": process.returncode,
        "killed": process.returncode in (-9, 137),
        "steps_done": max(steps, default=0),
        "seconds": round(time.perf_counter() - start, 1),
        "steps_per_s_settled": sorted(settled)[len(settled) // 2] if settled else None,
        "max_rss": max((s[1] for s in samples), default=0),
        "max_rss_not_reclaimable": max((s[1] - s[2] for s in samples), default=0),
        "max_lazy_free": max((s[2] for s in samples), default=0),
        "log_tail": text.splitlines()[-3:],
    }


def markdown(report: dict) -> str:
    limit = f"memory cgroup of {report['limit'] / 2**30:.1f} GiB" if report["limit"] else "no memory limit"
    lines = [
        f"# vitjax.main under a memory limit (DeiT-tiny recipe, batch {report['batch']}, {report['steps']} steps)",
        "",
        f"{report['date']}, CPU: {report['cpu']}, commit {report['commit']}; {limit}. `{report['command']}`",
        "",
        "| variant | environment | allocator | ended | steps | steps/s (settled median) | max RSS | max RSS not reclaimable | max LazyFree |",
        "|:--|:--|:--|:--|--:|--:|--:|--:|--:|",
    ]
    for name, r in report["variants"].items():
        ended = (
            "killed (out of memory)"
            if r["killed"]
            else ("finished" if r["returncode"] == 0 else f"exit {r['returncode']}")
        )
        rate = f"{r['steps_per_s_settled']:.2f}" if r["steps_per_s_settled"] else "-"
        settings = " ".join(f"{k}={v}" for k, v in r["environment"].items()) or "(as it comes)"
        lines.append(
            f"| {name} | `{settings}` | {r['allocator']} | {ended} | {r['steps_done']} | {rate} | {r['max_rss'] / 2**30:.1f} GiB "
            f"| {r['max_rss_not_reclaimable'] / 2**30:.1f} GiB | {r['max_lazy_free'] / 2**30:.1f} GiB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=parse_size, default=0, help="a memory cgroup of this size per run (0: none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": machine.describe(measure_clock=False).get("cpu", ""),
        "commit": source_state(),
        "command": " ".join(["python -m benchmarks.studies.memory_limit", *(sys.argv[1:] if argv is None else argv)]),
        "limit": args.limit,
        "batch": args.batch,
        "steps": args.steps,
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "data", Path(tmp) / "work"
        write_data(data, 200, 4)
        work.mkdir()
        for number, (name, env) in enumerate(parse_variants(args.variants)):
            cgroup = MemoryCgroup(args.limit, f"vitjax_memory_limit_{os.getpid()}_{number}") if args.limit else None
            try:
                report["variants"][name] = run_variant(name, env, args, data, work, cgroup)
            finally:
                if cgroup:
                    cgroup.remove()
            write_report(report, args.out)  # variant by variant: a later failure keeps what was measured
    print(markdown(report))
    return 0


def write_report(report: dict, out: Path) -> None:
    """Into ``out/memory_limit.{json,md}``, one report per limit (the latest of each kept)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "memory_limit.json"
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything[f"limit_{report['limit']}"] = report
    path.write_text(json.dumps(everything, indent=1) + "\n")
    (out / "memory_limit.md").write_text("\n".join(markdown(r) for _, r in sorted(everything.items())))


if __name__ == "__main__":
    raise SystemExit(main())
