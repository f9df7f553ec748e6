"""The whole training loop against timm's: input pipeline alone, then end to end (issue 26).

``python -m benchmarks.timm_loop [--batch 32 [8 ...]] [--images 200] [--warmup 8] [--steps 16] [--log-every 2] [--rounds 2]``

One folder of ~200 photo-like 500x375 JPEGs (``benchmarks.loader.write_jpegs``), the same batch,
the same cores, the DeiT ImageNet recipe on both sides (224px random resized crop, bicubic, flip,
RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 with per-pixel noise, Mixup 0.8 /
CutMix 1.0, label smoothing 0.1, AdamW at 5e-4 per 512 images, weight decay 0.05).

**Pipeline alone** (images/s, and per core: images/s / min(workers, cores), the main thread
counting as one core), each side in its own process, batches read back to back after one
warm-up batch for at least ``--seconds``. Beside that nominal count, each row reports the CPU
its whole process tree used in the window (``/proc``: the main process, its threads and its
worker processes), as busy cores and images per CPU-second: a main process does more than
"one core" of work where torch's own threads normalize the batch, for instance.

* ours: :class:`vitjax.data.pipeline.TrainLoader` as ``Experiment.train_loader`` builds it for
  ``configs/deit_tiny.py`` (the model's ImageNet recipe, as ``benchmarks.train_loop.model_config``
  points it at the folder), ``data.num_workers`` 0 (main thread), 1 and 2 threads. Out: uint8
  NHWC batches after crop, flip and RandAugment, with random erasing's rectangles and noise drawn
  (``Batch.erase``, ``Batch.erase_noise``). Normalizing, putting the erasing in and Mixup/CutMix
  are not in it: our step does them on the device.
* timm: ``timm.data.create_dataset`` + ``create_loader`` as timm's ``train.py`` sets them up on a
  CPU (prefetcher on, ``device=cpu``, Mixup/CutMix as ``FastCollateMixup`` in the workers' collate,
  normalization and random erasing ``re_mode='pixel'`` on the batch in the main process by
  ``PrefetchLoader``), ``use_multi_epochs_loader`` (so that 200 images, 6 batches an epoch, do not
  stall the workers at every epoch's end, which ImageNet's epochs would not), ``num_workers`` 0, 1
  and 2 worker processes. Out: float32 normalized NCHW batches, already mixed, with soft targets.
  So timm's side does Mixup/CutMix in its pipeline and ours does not.

  timm 1.0.31's ``PosterizeIncreasing`` asks Pillow for 0 bits when the noisy magnitude reaches
  10 (``mstd0.5``: ~2% of draws), which Pillow 13 refuses ("bits must be between 1 and 8"). We keep
  ``rand-m9-mstd0.5-inc1`` on both sides and give timm's op table a posterize that keeps at least
  1 bit (:func:`guard_timm_posterize`), which is what our RandAugment does; it costs nothing.

**End to end** (images/s of steady-state training steps), each run a fresh process:

* ours: exactly what a user runs, ``python -m vitjax.main --config configs/deit_tiny.py
  --workdir DIR`` with ``--config.*`` overrides for the folder (``data.source=folder``,
  ``data.root``, ``model.num_classes``), the batch, ``num_steps`` = ``--warmup`` + ``--steps``,
  ``log_every`` = ``--log-every`` and no plot. The loop prints a progress line after the first step,
  every ``log_every`` steps and the last, and each line waits for its step's metrics, so a line is
  printed when its step has finished. This process reads the child's stdout as it comes and
  stamps each line. Steady state is the median, over the ``--log-every``-step intervals from the
  line of step ``--warmup`` to that of the last step, of the seconds per step: compilation,
  start-up, the first steps (and the read-ahead the loader did while the step compiled) are
  outside it, and outlying intervals, such as those in which the process's heap grew, fall
  outside the median while they are fewer than half. (Each of the first few
  steps at batch 32 can map ~1.75 GB of fresh memory, whose first touch costs this VM's kernel
  ~1-3 s a GB; the step then runs at its steady speed for good.) The mean over all the timed
  steps, heap growth included, is reported beside it. The final checkpoint and evaluation come
  after it (the run is stopped at its last line). ``data_wait`` is the loop's own measure from
  ``metrics.jsonl`` (the last logged step's share of time waiting for input).
* timm: a loop written here as timm's ``train.py`` runs it on a CPU: ``deit_tiny_patch16_224``
  (``num_classes`` = the folder's classes, ``drop_path_rate`` 0.1), ``create_optimizer_v2``
  AdamW (no decay on 1-D parameters and the model's ``no_weight_decay`` set), a cosine schedule
  with warm-up stepped per update, ``SoftTargetCrossEntropy``, fed by the timm loader above with
  2 workers, ``torch.set_num_threads(2)``. The loss is read (``loss.item()``) after the first
  step, every ``--log-every`` steps and the last (as our loop logs), each read stamped; steady
  state is timed the same way. A second timm row (``--no-timm-mimalloc`` leaves it out) runs the
  same loop on mimalloc with ``vitjax.main``'s settings, for context: the target compares against
  timm as it comes (glibc).
* bare steps, for context (not a target; ``--bare-steps``, 0 leaves them out): each side's
  training step on one batch already in memory, read back after every step, so that
  ``loop / bare`` says what each loop costs beyond its step. Ours: ``benchmarks.train_loop``'s
  ``bare_step_seconds`` (the loop's own jitted step) in a fresh process after
  ``keep_freed_memory``; timm's: the same forward, backward and AdamW update, in its loop's
  process right after the loop, on one of its batches.

Rounds run the four measurements in turn (ours, timm, ours, timm, ...), each in its own process,
so that machine noise falls on both sides; figures are medians over rounds. The allocator of each
side is recorded: ours as ``vitjax.main`` logs it (``host memory: ...``; it preloads mimalloc on
a CPU host where the wheel is installed, else keeps glibc's freed memory), and our pipeline and
bare-step processes start the same way (``preload_allocator``, ``keep_freed_memory``); timm's
processes run on glibc's ``malloc`` as it comes (``vitjax.hostmem.host_allocator``). The issue's targets, printed with a pass/fail verdict: our
pipeline >= 1.5x timm's images/s per core (compared at each worker count, and best against best),
our end-to-end loop >= 1.1x timm's. Results: ``benchmarks/results/timm_loop.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL, TIMM_MODEL, CONFIG = "DeiT_tiny_patch16_224", "deit_tiny_patch16_224", "configs/deit_tiny.py"
PIPELINE_TARGET, LOOP_TARGET = 1.5, 1.1


def recipe():
    """``configs/deit_tiny.py``'s config: the DeiT recipe both sides follow."""
    from benchmarks.train_loop import model_config

    return model_config(MODEL, Path("."), 8, 1, 1000)


def write_data(root: Path, images: int, classes: int) -> None:
    """``root/train/class_k/*.jpg`` (``images`` files) and a small ``root/val`` (our loop ends with an evaluation)."""
    from benchmarks.loader import write_jpegs

    write_jpegs(root / "train", images, classes, seed=0)
    write_jpegs(root / "val", 2 * classes, classes, seed=1)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def source_state() -> str:
    """The commit measured, and whether ``vitjax/`` or ``configs/`` differ from it in the working tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "vitjax", "configs"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip()[:12] + (" with uncommitted changes to vitjax/ or configs/" if dirty else "")


def allocator(process: str) -> str:
    """This process's ``malloc``: for our side as ``vitjax.main`` logs it, for timm's by name."""
    from vitjax.hostmem import allocator_summary, host_allocator

    return allocator_summary() if process == "vitjax" else host_allocator()


# --- pipeline alone -------------------------------------------------------------------------


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process, all its threads, and its living descendants."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = {os.getpid()}
    for _ in range(8):  # descendants, a few generations deep
        tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
    ticks = sum(stats[pid][1] for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def time_pipeline(batches, batch: int, seconds: float, min_batches: int) -> dict:
    """Images/s over the batches after a warm-up batch, and the CPU the process tree used meanwhile."""
    started = time.perf_counter()
    next(batches)
    warmup = time.perf_counter() - started
    cpu, started, count = tree_cpu_seconds(), time.perf_counter(), 0
    while count < min_batches or time.perf_counter() - started < seconds:
        next(batches)
        count += 1
    wall, cpu = time.perf_counter() - started, tree_cpu_seconds() - cpu
    batches.close()
    return {
        "images_per_s": count * batch / wall,
        "seconds": wall,
        "batches": count,
        "warmup_s": warmup,
        "cpu_s": cpu,
        "busy_cores": cpu / wall,
        "images_per_cpu_s": count * batch / cpu if cpu > 0 else math.nan,
    }


def ours_pipeline(root: Path, batch: int, workers: list[int], seconds: float, min_batches: int) -> list[dict]:
    """Our training loader, as ``vitjax.main`` builds it for ``configs/deit_tiny.py``, per worker count."""
    from benchmarks.train_loop import model_config
    from vitjax.hostmem import keep_freed_memory
    from vitjax.training.experiment import Experiment

    keep_freed_memory()  # as vitjax.main does before anything else
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitjax-timm-loop-") as work:
        for n in workers:
            c = model_config(MODEL, root, batch, 10**6, classes)
            c.data.num_workers = n
            loader = Experiment(c, Path(work) / f"w{n}").train_loader()
            out = time_pipeline(loader.iterate(0), batch, seconds, min_batches)
            rows.append({"workers": n, "kind": "threads" if n else "main thread", **out})
    return rows


def guard_timm_posterize() -> None:
    """timm's ``PosterizeIncreasing`` with at least 1 bit kept (Pillow 13 refuses 0; see the docstring)."""
    from timm.data import auto_augment

    if getattr(auto_augment.NAME_TO_OP["PosterizeIncreasing"], "guarded", False):
        return
    auto_augment.NAME_TO_OP["PosterizeIncreasing"] = _posterize_at_least_one_bit


def _posterize_at_least_one_bit(img, bits_to_keep, **kwargs):
    from timm.data import auto_augment

    return auto_augment.posterize(img, max(1, bits_to_keep), **kwargs)


_posterize_at_least_one_bit.guarded = True


def timm_loader(root: Path, batch: int, workers: int, classes: int, seed: int = 0):
    """timm's training loader with the DeiT recipe, set up as timm's ``train.py`` does on a CPU."""
    import torch
    from timm.data import FastCollateMixup, create_dataset, create_loader

    guard_timm_posterize()
    torch.manual_seed(seed)
    a = recipe().augment
    dataset = create_dataset("", root=str(root), split="train", is_training=True, batch_size=batch)
    mixup = FastCollateMixup(
        mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha,
        prob=a.mix_prob,
        switch_prob=a.switch_prob,
        mode="batch",
        label_smoothing=a.label_smoothing,
        num_classes=classes,
    )
    return create_loader(
        dataset,
        input_size=(3, 224, 224),
        batch_size=batch,
        is_training=True,
        scale=tuple(a.crop_scale),
        hflip=0.5 if a.hflip else 0.0,
        auto_augment=a.randaugment,
        interpolation=a.interpolation,
        re_prob=a.random_erasing,
        re_mode="pixel",
        re_count=1,
        num_workers=workers,
        collate_fn=mixup,
        device=torch.device("cpu"),
        use_prefetcher=True,
        use_multi_epochs_loader=True,
    )


def forever(loader):
    """The loader's batches epoch after epoch, as one closable iterator."""
    while True:
        yield from loader


def timm_pipeline(root: Path, batch: int, workers: list[int], seconds: float, min_batches: int) -> list[dict]:

    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    rows = []
    for n in workers:
        loader = timm_loader(root, batch, n, classes)
        out = time_pipeline(forever(loader), batch, seconds, min_batches)
        rows.append({"workers": n, "kind": "processes" if n else "main process", **out})
        del loader  # its worker processes end with it
    return rows


# --- end to end -----------------------------------------------------------------------------


def steady_seconds(stamps: dict[int, float], warmup: int, steps: int) -> float:
    """Seconds per step between the stamp of step ``warmup`` and that of step ``warmup + steps``."""
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def interval_seconds(stamps: dict[int, float], warmup: int, steps: int, every: int) -> list[float]:
    """Seconds per step in each ``every``-step interval between the stamps of steps ``warmup`` and
    ``warmup + steps``."""
    marks = range(warmup, warmup + steps + 1, every)
    return [(stamps[b] - stamps[a]) / every for a, b in zip(marks, marks[1:])]


def loop_timing(stamps: dict[int, float], warmup: int, steps: int, every: int) -> dict:
    """Steady state as the median ``every``-step interval (outlying intervals, such as one in which
    the process's heap grew and paid for fresh pages, fall outside it while they are fewer than
    half), beside the plain mean over all the timed steps (what the clock saw, heap growth
    included)."""
    intervals = interval_seconds(stamps, warmup, steps, every)
    return {
        "s_per_step": statistics.median(intervals),
        "mean_s_per_step": steady_seconds(stamps, warmup, steps),
        "interval_s_per_step": intervals,
    }


def logged(step: int, every: int, last: int) -> bool:
    """Whether a loop logging every ``every`` steps (and after the first and the last) logs ``step``."""
    return step == 1 or step % every == 0 or step == last


def ours_loop(root: Path, batch: int, warmup: int, steps: int, every: int, workdir: Path) -> dict:
    """``python -m vitjax.main --config configs/deit_tiny.py`` on the folder, its progress lines stamped here."""
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    overrides = {
        "data.source": "folder",
        "data.root": str(root),
        "model.num_classes": classes,
        "batch_size": batch,
        "eval_batch_size": batch,
        "num_steps": warmup + steps,
        "log_every": every,
        "eval_every": 0,
        "plot": False,
    }
    command = [sys.executable, "-m", "vitjax.main", "--config", str(ROOT / CONFIG), "--workdir", str(workdir)]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    stamps: dict[int, float] = {}
    started = time.perf_counter()
    log = workdir.with_name(workdir.name + ".stderr")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        try:
            for line in proc.stdout:
                now = time.perf_counter()
                if line.startswith("step "):
                    stamps[int(line.split()[1].split("/")[0])] = now
                    if warmup + steps in stamps:
                        break
        finally:
            proc.kill()  # the timed steps are done: the checkpoint and evaluation that follow are not measured
            proc.communicate()
    err = log.read_text()
    if warmup + steps not in stamps or warmup not in stamps:
        raise RuntimeError(f"vitjax.main printed steps {sorted(stamps)}:\n{err[-3000:]}")
    matmul = err.split("dense matmuls: ", 1)[1].split()[0] if "dense matmuls: " in err else "unknown"
    memory = err.split("host memory: ", 1)[1].splitlines()[0] if "host memory: " in err else "unknown"
    from vitjax.training import reporting

    waits = [r["data_wait"] for r in reporting.read_metrics(workdir) if r["kind"] == "train"]
    timing = loop_timing(stamps, warmup, steps, every)
    return {
        **timing,
        "images_per_s": batch / timing["s_per_step"],
        "first_line_s": stamps[1] - started,
        "data_wait": waits[-1] if waits else math.nan,
        "matmul": matmul,
        "allocator": memory,
        "command": " ".join(command[1:])
        .replace(str(workdir), "DIR")
        .replace(str(root), "DATA")
        .replace(str(ROOT) + "/", ""),
    }


def timm_loop(
    root: Path,
    batch: int,
    warmup: int,
    steps: int,
    every: int,
    workers: int = 2,
    threads: int = 2,
    bare_steps: int = 0,
) -> dict:
    """timm's DeiT-tiny trained as timm's ``train.py`` does on a CPU, fed by :func:`timm_loader`."""
    import timm
    import torch
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.set_num_threads(threads)
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    c = recipe()
    o = c.optimizer
    loader = timm_loader(root, batch, workers, classes)
    model = timm.create_model(TIMM_MODEL, num_classes=classes, drop_path_rate=c.model.drop_path_rate)
    model.train()
    optimizer = create_optimizer_v2(
        model, "adamw", lr=o.base_lr * batch / o.lr_batch_base, weight_decay=o.weight_decay, betas=(o.b1, o.b2)
    )
    schedule, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=int(c.num_epochs),
        warmup_epochs=int(o.warmup_epochs),
        warmup_lr=o.warmup_start_lr,
        min_lr=o.min_lr,
        updates_per_epoch=len(loader),
    )
    criterion = SoftTargetCrossEntropy()
    stamps: dict[int, float] = {}
    started = time.perf_counter()
    batches = forever(loader)
    for step in range(1, warmup + steps + 1):
        images, targets = next(batches)
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step_update(num_updates=step)
        if logged(step, every, warmup + steps):
            loss.item()
            stamps[step] = time.perf_counter()
    images, targets = next(batches)
    batches.close()
    bare = []
    for _ in range(bare_steps):  # the same step on one batch: what the loop costs beyond it
        begun = time.perf_counter()
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        bare.append(time.perf_counter() - begun)
    timing = loop_timing(stamps, warmup, steps, every)
    return {
        **timing,
        "images_per_s": batch / timing["s_per_step"],
        "bare_s_per_step": statistics.median(bare) if bare else None,
        "first_line_s": stamps[1] - started,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def ours_bare(root: Path, batch: int, steps: int, workdir: Path) -> dict:
    """Our loop's own jitted step on one device batch (``benchmarks.train_loop.bare_step_seconds``), after
    ``keep_freed_memory`` as ``vitjax.main`` calls it."""
    from benchmarks.train_loop import bare_step_seconds, model_config
    from vitjax.hostmem import keep_freed_memory

    keep_freed_memory()
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    config = model_config(MODEL, root, batch, 2 + steps, classes)
    return {"bare_s_per_step": statistics.median(bare_step_seconds(config, workdir, steps))}


# --- orchestration --------------------------------------------------------------------------


def mimalloc_environment() -> dict[str, str] | None:
    """The environment that runs a process on mimalloc as ``vitjax.main`` preloads it (the wheel's library,
    ``vitjax.hostmem.MIMALLOC_SETTINGS``), or ``None`` where the wheel is not installed."""
    from vitjax.hostmem import MIMALLOC_SETTINGS, mimalloc_library

    library = mimalloc_library()
    if library is None:
        return None
    return {**os.environ, **MIMALLOC_SETTINGS, "LD_PRELOAD": library}


def in_process(kind: str, args, env: dict[str, str] | None = None) -> dict:
    """One measurement in a fresh process (``--worker``): its JSON result."""
    command = [sys.executable, "-m", "benchmarks.timm_loop", "--worker", kind, "--data", str(args.data)]
    command += ["--batch", str(args.batch[0]), "--workers", *map(str, args.workers)]
    command += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--log-every", str(args.log_every), "--bare-steps", str(args.bare_steps)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args) -> int:
    batch = args.batch[0]
    if args.worker == "pipeline-ours":
        result = {
            "rows": ours_pipeline(args.data, batch, args.workers, args.seconds, 2),
            "allocator": allocator("vitjax"),
        }
    elif args.worker == "pipeline-timm":
        result = {
            "rows": timm_pipeline(args.data, batch, args.workers, args.seconds, 2),
            "allocator": allocator("timm"),
        }
    elif args.worker == "bare-ours":
        with tempfile.TemporaryDirectory(prefix="vitjax-timm-loop-bare-") as work:
            result = {**ours_bare(args.data, batch, args.bare_steps, Path(work)), "allocator": allocator("vitjax")}
    else:
        result = timm_loop(args.data, batch, args.warmup, args.steps, args.log_every, bare_steps=args.bare_steps)
        result["allocator"] = allocator("timm")
    print(json.dumps(result))
    return 0


def measure_batch(args, root: Path, batch: int, work: Path) -> dict:
    """Interleaved rounds for one batch size: raw results per side."""
    sub = argparse.Namespace(**{**vars(args), "data": root, "batch": [batch]})
    mimalloc = mimalloc_environment() if args.timm_mimalloc else None
    sides = ["ours", "timm"] + (["timm-mimalloc"] if mimalloc else [])
    raw: dict[str, list] = {"pipeline ours": [], "pipeline timm": [], **{f"loop {side}": [] for side in sides}}
    for r in range(args.rounds):
        raw["pipeline ours"].append(in_process("pipeline-ours", sub))
        raw["pipeline timm"].append(in_process("pipeline-timm", sub))
        for side in sides:
            if side == "ours":
                out = ours_loop(root, batch, args.warmup, args.steps, args.log_every, work / f"b{batch}-r{r}")
                if args.bare_steps:
                    out["bare_s_per_step"] = in_process("bare-ours", sub)["bare_s_per_step"]
            else:
                out = in_process("loop-timm", sub, env=mimalloc if side == "timm-mimalloc" else None)
            raw[f"loop {side}"].append(out)
        p = {
            s: ", ".join(f"{row['workers']}w {row['images_per_s']:.0f}" for row in raw[f"pipeline {s}"][-1]["rows"])
            for s in ("ours", "timm")
        }
        loops = ", ".join(f"{side} {raw[f'loop {side}'][-1]['images_per_s']:.1f}" for side in sides)
        print(
            f"batch {batch} round {r}: pipeline img/s ours {p['ours']} timm {p['timm']}; loop img/s {loops}", flush=True
        )
    return raw


def summarize(batch: int, raw: dict, n_cores: int) -> dict:
    """Medians over rounds, per-core figures and the two targets' verdicts."""
    pipeline = []
    for side in ("ours", "timm"):
        rounds = raw[f"pipeline {side}"]
        for i, first in enumerate(rounds[0]["rows"]):
            ips = statistics.median(r["rows"][i]["images_per_s"] for r in rounds)
            used = max(1, min(first["workers"], n_cores))
            pipeline.append(
                {
                    "side": side,
                    "workers": first["workers"],
                    "kind": first["kind"],
                    "images_per_s": ips,
                    "cores_used": used,
                    "images_per_s_per_core": ips / used,
                    "rounds": [r["rows"][i]["images_per_s"] for r in rounds],
                    "busy_cores": statistics.median(r["rows"][i]["busy_cores"] for r in rounds),
                    "images_per_cpu_s": statistics.median(r["rows"][i]["images_per_cpu_s"] for r in rounds),
                    "allocator": rounds[0]["allocator"],
                }
            )
    ours = {row["workers"]: row for row in pipeline if row["side"] == "ours"}
    theirs = {row["workers"]: row for row in pipeline if row["side"] == "timm"}
    comparisons = [
        {
            "what": f"pipeline per core, {n} workers",
            "ours": ours[n]["images_per_s_per_core"],
            "timm": theirs[n]["images_per_s_per_core"],
        }
        for n in sorted(ours)
        if n in theirs
    ]
    best = {
        s: max(rows.values(), key=lambda row: row["images_per_s_per_core"])
        for s, rows in (("ours", ours), ("timm", theirs))
    }
    comparisons.append(
        {
            "what": "pipeline per core, best against best",
            "ours": best["ours"]["images_per_s_per_core"],
            "timm": best["timm"]["images_per_s_per_core"],
        }
    )
    loop = {}
    for side in [key.split(" ", 1)[1] for key in raw if key.startswith("loop ")]:
        rounds = raw[f"loop {side}"]
        loop[side] = {
            "images_per_s": statistics.median(r["images_per_s"] for r in rounds),
            "s_per_step": statistics.median(r["s_per_step"] for r in rounds),
            "mean_s_per_step": statistics.median(r["mean_s_per_step"] for r in rounds),
            "rounds": [r["images_per_s"] for r in rounds],
            "allocator": rounds[0]["allocator"],
            **{
                k: rounds[0][k]
                for k in ("command", "matmul", "workers", "torch_threads", "torch", "timm")
                if k in rounds[0]
            },
        }
        if side == "ours":
            loop[side]["data_wait"] = statistics.median(r["data_wait"] for r in rounds)
        bare = [r["bare_s_per_step"] for r in rounds if r.get("bare_s_per_step")]
        if bare:
            loop[side]["bare_s_per_step"] = statistics.median(bare)
            loop[side]["loop_over_bare"] = loop[side]["s_per_step"] / loop[side]["bare_s_per_step"]
    comparisons.append(
        {"what": "end-to-end loop images/s", "ours": loop["ours"]["images_per_s"], "timm": loop["timm"]["images_per_s"]}
    )
    if "timm-mimalloc" in loop:  # not a target: timm as it runs on our allocator
        comparisons.append(
            {
                "what": "end-to-end loop images/s, timm on mimalloc",
                "ours": loop["ours"]["images_per_s"],
                "timm": loop["timm-mimalloc"]["images_per_s"],
                "target": None,
            }
        )
    for comp in comparisons:
        comp["ratio"] = comp["ours"] / comp["timm"]
        if "target" not in comp:
            comp["target"] = LOOP_TARGET if comp["what"].startswith("end-to-end") else PIPELINE_TARGET
        if comp["target"] is None:
            comp["verdict"] = "(context)"
        else:
            comp["verdict"] = "pass" if comp["ratio"] >= comp["target"] else "fail"
    return {"batch": batch, "pipeline": pipeline, "loop": loop, "targets": comparisons}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# The whole training loop against timm's",
        "",
        f"`{report['command']}` at commit {report['source']}.",
        "",
        f"CPU: {m['cpu']}, {m['cores']} cores (load average {m['load_average_before']:.2f} before). "
        f"{report['images']} JPEGs of 500x375 in {report['classes']} classes; recipe: {report['recipe']}. "
        f"Pipeline rows read batches for at least {report['seconds']} s after a warm-up batch; loop rows time "
        f"{report['steps']} steps after {report['warmup']} in intervals of {report['log_every']} (s/step: the median "
        f"interval; the mean over all timed steps beside it); {report['rounds']} interleaved rounds, medians. "
        f"timm {report['versions']['timm']}, torch {report['versions']['torch']}.",
        "",
        "Included: " + report["included"]["ours"] + " " + report["included"]["timm"],
        "",
        f"Our loop: `python {report['batches'][0]['loop']['ours']['command']}` (DATA: the folder; batch and steps as below).",
        "",
    ]
    for b in report["batches"]:
        lines += [
            f"## Batch {b['batch']}",
            "",
            "| pipeline | workers | img/s | cores | img/s per core | rounds | busy cores (measured) | img per CPU-s | allocator |",
            "|:--|--:|--:|--:|--:|:--|--:|--:|:--|",
        ]
        for row in b["pipeline"]:
            rounds = ", ".join(f"{x:.1f}" for x in row["rounds"])
            lines.append(
                f"| {row['side']} ({row['kind']}) | {row['workers']} | {row['images_per_s']:.1f} | {row['cores_used']} | "
                f"{row['images_per_s_per_core']:.1f} | {rounds} | {row['busy_cores']:.2f} | {row['images_per_cpu_s']:.1f} | "
                f"{row['allocator'].split(' (')[0]} |"
            )
        lines += [
            "",
            "| end-to-end loop | s/step (median interval) | img/s | rounds | s/step (mean, all timed steps) | bare step, s | loop / bare | allocator |",
            "|:--|--:|--:|:--|--:|--:|--:|:--|",
        ]
        for side, row in b["loop"].items():
            rounds = ", ".join(f"{x:.1f}" for x in row["rounds"])
            name = f"ours (`vitjax.main`, matmuls {row.get('matmul')}, data_wait {row.get('data_wait', math.nan):.0%})"
            if side.startswith("timm"):
                name = f"timm ({row['workers']} workers, {row['torch_threads']} torch threads)"
            bare = f"{row['bare_s_per_step']:.3f} | {row['loop_over_bare']:.2f}x" if "bare_s_per_step" in row else "| "
            lines.append(
                f"| {name} | {row['s_per_step']:.3f} | {row['images_per_s']:.1f} | {rounds} | "
                f"{row['mean_s_per_step']:.3f} | {bare} | {row['allocator'].split(' (')[0]} |"
            )
        lines += ["", "| target | ours | timm | ours / timm | needed | verdict |", "|:--|--:|--:|--:|--:|:--|"]
        for t in b["targets"]:
            needed = f"{t['target']}x" if t["target"] else ""
            lines.append(
                f"| {t['what']} | {t['ours']:.1f} | {t['timm']:.1f} | {t['ratio']:.2f}x | {needed} | {t['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--warmup", type=int, default=8, help="steps before the timed ones")
    p.add_argument("--steps", type=int, default=16, help="timed steady-state steps")
    p.add_argument("--log-every", type=int, default=2, help="the loops' log_every: the timed intervals' length")
    p.add_argument(
        "--no-timm-mimalloc",
        dest="timm_mimalloc",
        action="store_false",
        help="leave out the row of timm's loop on mimalloc (as vitjax.main preloads it)",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=8.0, help="minimum time per pipeline row")
    p.add_argument("--bare-steps", type=int, default=6, help="steps of each side's bare step on one batch (0: none)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--worker", choices=("pipeline-ours", "pipeline-timm", "loop-timm", "bare-ours"), help=argparse.SUPPRESS
    )
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.log_every < 1:
        p.error("--warmup, --steps and --log-every must be at least 1")
    if args.warmup % args.log_every or args.steps % args.log_every:
        p.error("--warmup and --steps must be multiples of --log-every")
    if args.worker:
        return worker(args)

    from benchmarks.machine import describe

    load_before = os.getloadavg()[0]
    described = describe(measure_clock=False)
    a = recipe().augment
    with tempfile.TemporaryDirectory(prefix="vitjax-timm-loop-") as tmp:
        root = Path(tmp) / "data"
        write_data(root, args.images, args.classes)
        batches = []
        for batch in args.batch:
            raw = measure_batch(args, root, batch, Path(tmp) / "work")
            batches.append({**summarize(batch, raw, cores()), "raw": raw})
    first = batches[0]["loop"]["timm"]
    report = {
        "command": "python -m benchmarks.timm_loop " + " ".join(argv if argv is not None else sys.argv[1:]),
        "source": source_state(),
        "machine": {
            "cpu": described["cpu"],
            "cores": described["cores"],
            "isa": described["isa"],
            "load_average_before": load_before,
        },
        "images": args.images,
        "classes": args.classes,
        "warmup": args.warmup,
        "steps": args.steps,
        "log_every": args.log_every,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "recipe": (
            f"{CONFIG}: 224px random resized crop {tuple(a.crop_scale)} {a.interpolation}, hflip, RandAugment "
            f"{a.randaugment} (timm: same string, posterize kept at >= 1 bit), random erasing {a.random_erasing}, "
            f"Mixup {a.mixup_alpha} / CutMix {a.cutmix_alpha}, label smoothing {a.label_smoothing}, AdamW"
        ),
        "included": {
            "ours": "ours: decode, crop, flip, RandAugment, random erasing's draws (rectangle and noise); uint8 out "
            "(normalizing, putting the erasing in and Mixup/CutMix run inside the jitted step, so they count in the loop "
            "rows only).",
            "timm": "timm: decode, crop, flip, RandAugment, Mixup/CutMix (FastCollateMixup, in the workers), normalize and "
            "random erasing (PrefetchLoader, main process).",
        },
        "versions": {"timm": first["timm"], "torch": first["torch"]},
        "batches": batches,
    }
    from interop.measure import write_results

    md = markdown(report)
    write_results(args.out, "timm_loop", report, md)
    print(md)
    return 0


if __name__ == "__main__":
    if set(sys.argv) & {"pipeline-ours", "bare-ours"}:  # our side's processes start as vitjax.main does
        from vitjax.hostmem import preload_allocator

        preload_allocator()
    raise SystemExit(main())
