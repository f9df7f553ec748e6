"""Training: one real run, sharding strategies, resumption, preemption, NaN, modes."""

import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import vitjax
from vitjax.hostmem import mimalloc_library, preload_plan
from vitjax.training import checkpoints, train
from vitjax.training.config import base_config
from vitjax.training.monitoring import InputWaitMeter, LossCheck
from vitjax.training.optim import lr_schedule, make_optimizer
from vitjax.training.steps import normalize_on_device

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TF_CPP_MIN_LOG_LEVEL": "3"}


def tiny_config(**overrides):
    """Digits, the test-size DeiT, a few steps: seconds per run."""
    c = base_config()
    c.model.update(name="DeiT_test_patch8_32", num_classes=10, drop_path_rate=0.1, matmul="xla")  # oneDNN: its own test
    c.augment.update(
        random_resized_crop=True,
        crop_scale=(0.7, 1.0),
        hflip=False,
        label_smoothing=0.1,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
    )
    c.optimizer.update(base_lr=1e-3, lr_batch_base=32, warmup_epochs=0.1, min_lr=1e-5)
    c.update(batch_size=32, eval_batch_size=360, num_steps=6, log_every=2, checkpoint_every=3, plot=False)
    c.data.num_workers = 1
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


def final_params(workdir) -> dict:
    return flatten_dict(checkpoints.load_variables(workdir)["params"], sep="/")


def assert_params_close(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, f"max parameter difference {worst}"


def test_a_short_run_writes_metrics_tensorboard_config_plot_and_checkpoints(tmp_path):
    config = tiny_config(plot=True, eval_every=4)
    results = train.train_and_evaluate(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 4, 6]
    assert all({"loss", "lr"} <= r.keys() and np.isfinite(r["loss"]) for r in train_records)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 6] and 0 <= evals[-1]["top1"] <= evals[-1]["top5"] <= 1
    assert results["count"] == 360
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "DeiT_test_patch8_32"
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert tensorboard_scalars(tmp_path / "tensorboard", "train/loss") == [
        (r["step"], pytest.approx(r["loss"])) for r in train_records
    ]
    assert checkpoints.latest_step(tmp_path) == 6


def tensorboard_scalars(logdir, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one scalar tag, read back with TensorBoard's own reader (no TensorFlow)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_rerunning_a_finished_run_resumes_and_does_nothing_more(tmp_path):
    train.train_and_evaluate(tiny_config(num_steps=3), tmp_path)
    before = final_params(tmp_path)
    train.train_and_evaluate(tiny_config(num_steps=3), tmp_path)
    assert_params_close(final_params(tmp_path), before, atol=0)


@pytest.mark.parametrize(
    "strategy, mesh",
    [("dp", (8, 1)), ("fsdp", (8, 1)), ("tp", (2, 4)), ("fsdp_tp", (4, 2))],
)
def test_sharded_training_matches_one_device(strategy, mesh, tmp_path):
    one = tiny_config(num_steps=3, **{"mesh.data": 1})
    train.train_and_evaluate(one, tmp_path / "one")
    sharded = tiny_config(num_steps=3, **{"mesh.data": mesh[0], "mesh.model": mesh[1], "sharding.strategy": strategy})
    train.train_and_evaluate(sharded, tmp_path / "sharded")
    assert_params_close(final_params(tmp_path / "sharded"), final_params(tmp_path / "one"), atol=2e-5)
    losses = {
        name: [
            json.loads(row)["loss"]
            for row in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            if '"train"' in row
        ]
        for name in ("one", "sharded")
    }
    np.testing.assert_allclose(losses["sharded"], losses["one"], rtol=1e-5)


def test_one_device_run_on_onednn_matmuls_trains_like_xla_and_auto_keeps_xla_on_a_mesh(tmp_path, caplog):
    from vitjax.kernels import onednn

    if not onednn.available():
        pytest.skip(onednn.unavailable_reason())
    train.train_and_evaluate(tiny_config(num_steps=3, **{"mesh.data": 1, "model.matmul": "xla"}), tmp_path / "xla")
    with caplog.at_level(logging.INFO, logger="vitjax"):
        train.train_and_evaluate(
            tiny_config(num_steps=3, **{"mesh.data": 1, "model.matmul": "auto"}), tmp_path / "onednn"
        )
    assert "dense matmuls: onednn" in caplog.text  # auto, one CPU device, the kernel builds
    assert_params_close(final_params(tmp_path / "onednn"), final_params(tmp_path / "xla"), atol=2e-5)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitjax"):
        train.train_and_evaluate(
            tiny_config(num_steps=1, **{"mesh.data": 8, "model.matmul": "auto"}), tmp_path / "mesh"
        )
    assert "dense matmuls: xla" in caplog.text
    with pytest.raises(ValueError, match="runs on one CPU device; this run has 8 devices"):
        train.train_and_evaluate(
            tiny_config(num_steps=1, **{"mesh.data": 8, "model.matmul": "onednn"}), tmp_path / "refused"
        )


def test_sharding_rules_place_parameters_as_the_strategy_says():
    from jax.sharding import PartitionSpec as P

    from vitjax.training import sharding

    exp = train.Experiment(
        tiny_config(**{"mesh.data": 2, "mesh.model": 4, "sharding.strategy": "fsdp_tp"}), "/tmp/unused"
    )
    specs = jax.tree.map(lambda s: s.spec, exp.param_shardings)
    block = specs["blocks_0"]
    assert block["attn"]["qkv"]["kernel"] == P("data", "model")  # [64, 192]: columns over model, rows over data
    assert block["attn"]["proj"]["kernel"] == P("model", "data")
    assert block["mlp"]["fc1"]["bias"] == P("model")
    assert specs["pos_embed"] == P(None, None, "data")
    dp = sharding.param_spec("blocks_0/attn/qkv/kernel", (64, 192), exp.mesh, "dp")
    assert dp == P(None, None)
    with pytest.raises(ValueError, match="unknown sharding.strategy"):
        sharding.param_spec("x", (4,), exp.mesh, "zero3")


def test_optimizer_state_is_sharded_like_its_parameters():
    import jax.numpy as jnp
    import optax
    from jax.sharding import PartitionSpec as P

    from vitjax.training import sharding

    exp = train.Experiment(
        tiny_config(**{"mesh.data": 2, "mesh.model": 4, "sharding.strategy": "fsdp_tp"}), "/tmp/unused"
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    abstract = jax.eval_shape(lambda p: train.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), exp.abstract_params)
    shardings = sharding.state_shardings(abstract, tx, exp.mesh, "fsdp_tp")
    adam = shardings.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        assert moments["blocks_0"]["attn"]["qkv"]["kernel"].spec == P("data", "model")
        assert moments["pos_embed"].spec == P(None, None, "data")
    assert adam.count.spec == P() and shardings.step.spec == P()
    assert jax.tree.map(lambda s: s.spec, shardings.params) == jax.tree.map(lambda s: s.spec, exp.param_shardings)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    train.train_and_evaluate(tiny_config(num_steps=3, **{"sharding.strategy": "fsdp"}), tmp_path)
    saved = final_params(tmp_path)
    # Resume the 8-device FSDP run on a single device and train on.
    train.train_and_evaluate(tiny_config(num_steps=6, **{"mesh.data": 1}), tmp_path)
    assert checkpoints.latest_step(tmp_path) == 6
    restored_at_3 = flatten_dict(checkpoints.load_variables(tmp_path, step=3)["params"], sep="/")
    assert_params_close(restored_at_3, saved, atol=0)


def test_load_variables_reads_a_variables_checkpoint_and_rejects_other_directories(tmp_path):
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    checkpoints.save_variables(tmp_path / "vars", {"params": {"dense": {"kernel": kernel}}})
    np.testing.assert_array_equal(checkpoints.load_variables(tmp_path / "vars")["params"]["dense"]["kernel"], kernel)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="plain: neither an orbax checkpoint"):
        checkpoints.load_variables(tmp_path / "plain")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(checkpoints.CheckpointError, match="file.bin: neither an orbax checkpoint"):
        checkpoints.load_variables(tmp_path / "file.bin")


def run_main(workdir, *overrides, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "vitjax.main",
        "--config",
        str(REPO / "configs" / "digits.py"),
        "--workdir",
        str(workdir),
        "--config.model.num_classes=10",
        "--config.batch_size=32",
        "--config.eval_batch_size=360",
        "--config.log_every=1",
        "--config.plot=False",
        "--config.data.num_workers=1",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)


def wait_for_checkpoint(workdir: Path, step: int, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").exists():
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint {step} in {workdir}")


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_result(tmp_path):
    args = ("--config.num_steps=40", "--config.checkpoint_every=10")
    assert run_main(tmp_path / "straight", *args).returncode == 0

    process = run_main(tmp_path / "killed", *args, wait=False)
    wait_for_checkpoint(tmp_path / "killed", 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints.latest_step(tmp_path / "killed") < 40
    rerun = run_main(tmp_path / "killed", *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resumed" in rerun.stderr
    assert_params_close(final_params(tmp_path / "killed"), final_params(tmp_path / "straight"), atol=0)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
    process = run_main(tmp_path, "--config.num_steps=400", "--config.checkpoint_every=5", wait=False)
    wait_for_checkpoint(tmp_path, 5, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output
    step = checkpoints.latest_step(tmp_path)
    assert 5 <= step < 400
    assert f"checkpoint saved at step {step}" in output


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    config = tiny_config(num_steps=50, **{"optimizer.base_lr": 1e12, "optimizer.warmup_epochs": 0.0})
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step \d+"):
        train.train_and_evaluate(config, tmp_path)


def test_the_nan_check_names_the_first_step_whose_loss_is_not_finite(tmp_path):
    """The loss is read one step late, so the host does not wait for the device every step;
    the error still names the step whose loss first went non-finite."""
    diverging = {"optimizer.base_lr": 1e12, "optimizer.warmup_epochs": 0.0}
    train.train_and_evaluate(
        tiny_config(num_steps=8, log_every=1, nan_check=False, **diverging), tmp_path / "unchecked"
    )
    losses = {
        r["step"]: r["loss"]
        for r in map(json.loads, (tmp_path / "unchecked" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    }
    first_bad = min(step for step, loss in losses.items() if not math.isfinite(loss))
    assert 1 < first_bad < 8, losses  # between the synchronous first and last steps: the deferred check decides
    checked = tiny_config(num_steps=8, log_every=100, checkpoint_every=100, **diverging)
    with pytest.raises(FloatingPointError, match=rf"training loss is (nan|-?inf) at step {first_bad}:"):
        train.train_and_evaluate(checked, tmp_path / "checked")
    assert checkpoints.latest_step(tmp_path / "checked") is None


def test_a_non_finite_loss_is_caught_after_the_next_dispatch_naming_its_own_step():
    import jax.numpy as jnp

    check = LossCheck(enabled=True)
    check.after_dispatch(1, jnp.asarray(0.5))
    check.after_dispatch(2, jnp.asarray(jnp.nan))  # not read yet: the device may still be computing it
    with pytest.raises(FloatingPointError, match="training loss is nan at step 2:"):
        check.after_dispatch(3, jnp.asarray(0.4))
    last = LossCheck(enabled=True)
    last.after_dispatch(1, jnp.asarray(jnp.inf))
    with pytest.raises(FloatingPointError, match="training loss is inf at step 1:"):
        last.latest()
    unchecked = LossCheck(enabled=False)
    unchecked.after_dispatch(1, jnp.asarray(jnp.nan))
    unchecked.after_dispatch(2, jnp.asarray(1.5))
    assert unchecked.latest() == 1.5


def test_data_wait_is_the_share_of_step_time_spent_getting_the_batch():
    meter = InputWaitMeter()
    assert meter.read() == 0.0
    with meter.waiting():
        time.sleep(0.2)
    with meter.stepping():
        pass
    assert meter.read() > 0.9
    with meter.waiting():
        pass
    with meter.stepping():
        time.sleep(0.2)
    assert meter.read() < 0.1
    for _ in range(2):  # accumulates over the steps since the last reading
        with meter.waiting():
            time.sleep(0.1)
        with meter.stepping():
            time.sleep(0.1)
    assert 0.25 < meter.read() < 0.75


def test_the_progress_line_reports_the_rate_since_the_previous_line():
    """The first line's rate includes compiling the step; later lines give the loop's rate as it is
    now (steps since the previous line over its seconds), and the ETA is the steps left at it."""
    from vitjax.training.reporting import Progress

    now = [100.0]
    progress = Progress(total_steps=1000, start_step=0, clock=lambda: now[0])
    now[0] += 12.0  # step 1: compiling
    assert " 0.08 steps/s " in progress.line(1, 2.3, 1e-3)
    now[0] += 2.0  # steps 2..100
    line = progress.line(100, 1.5, 1e-3)
    assert " 49.50 steps/s " in line and line.endswith("ETA 0:00:18")  # 900 steps at 49.5/s
    now[0] += 4.0  # steps 101..200, slower
    assert " 25.00 steps/s " in progress.line(200, 1.2, 1e-3)


def test_train_records_report_data_wait_between_0_and_1(tmp_path, capsys):
    train.train_and_evaluate(tiny_config(num_steps=4, log_every=2), tmp_path)
    records = [
        r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"
    ]
    assert [r["step"] for r in records] == [1, 2, 4]
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in records), records
    assert tensorboard_scalars(tmp_path / "tensorboard", "train/data_wait") == [
        (r["step"], pytest.approx(r["data_wait"])) for r in records
    ]
    assert re.search(r"step 4/4 .*  data_wait \d+%", capsys.readouterr().out)


def test_data_wait_counts_the_wait_for_a_logged_step_as_step_time(tmp_path, monkeypatch):
    # Every step is logged (log_every=1). Each batch takes 0.1 s to get (a sleep in the loader's
    # stream), and each step then runs for t more on the device after its dispatch (its loss goes
    # through 48 chained 768x768 matmuls, dispatched asynchronously; t is timed here, ~1 s on 2
    # cores). The wait for a logged step's own loss is step time, so data_wait is about
    # 0.1 / (0.1 + t); counted as neither (as it once was), the share would be 0.1 s against a
    # dispatch of a few ms: near 1.
    jitted, train_loader = train.jitted_train_step, train.Experiment.train_loader

    def matmuls(loss):
        x = jnp.full((768, 768), 1e-3, jnp.float32)
        x = jax.lax.fori_loop(0, 48, lambda _, y: jnp.tanh(y @ y), x)
        return loss + 0.0 * x[0, 0]

    def slow_on_the_device(*args, **kwargs):
        step, slow = jitted(*args, **kwargs), jax.jit(matmuls)

        def slow_step(state, *inputs):
            state, metrics = step(state, *inputs)
            return state, {**metrics, "loss": slow(metrics["loss"])}

        return slow_step

    def slow_to_read(self, *args, **kwargs):
        loader = train_loader(self, *args, **kwargs)
        iterate = loader.iterate

        def sleepy(start, place=None):
            with contextlib.closing(iterate(start, place=place)) as batches:
                for batch in batches:
                    time.sleep(0.1)
                    yield batch

        loader.iterate = sleepy
        return loader

    slow_alone = jax.jit(matmuls)
    jax.block_until_ready(slow_alone(jnp.float32(0)))
    started = time.perf_counter()
    jax.block_until_ready(slow_alone(jnp.float32(0)))
    device_seconds = time.perf_counter() - started
    monkeypatch.setattr(train, "jitted_train_step", slow_on_the_device)
    monkeypatch.setattr(train.Experiment, "train_loader", slow_to_read)
    train.train_and_evaluate(tiny_config(num_steps=5, log_every=1), tmp_path)
    records = [
        r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"
    ]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    bound = 0.1 / (0.1 + 0.5 * device_seconds)  # half the device time counted is already far from "near 1"
    assert all(0.0 < r["data_wait"] < bound for r in records[1:]), (device_seconds, records)


def test_config_typos_are_errors_and_overrides_apply(tmp_path):
    result = run_main(tmp_path, "--config.batch_sise=16")
    assert result.returncode != 0 and "batch_sise" in result.stderr
    result = run_main(tmp_path, "--config.mode=evaluate")
    assert result.returncode != 0 and "mode must be one of" in result.stderr


def test_eval_and_predict_modes_from_pdparams(tmp_path):
    train.train_and_evaluate(tiny_config(num_steps=3), tmp_path / "run")
    variables = checkpoints.load_variables(tmp_path / "run")
    vitjax.save_pdparams(variables, "DeiT_test_patch8_32", tmp_path / "w.pdparams")
    from_pdparams = train.evaluate(tiny_config(**{"init.pdparams": str(tmp_path / "w.pdparams")}), tmp_path / "eval")
    from_workdir = train.evaluate(tiny_config(), tmp_path / "run")
    assert from_pdparams["top1"] == from_workdir["top1"] and from_pdparams["count"] == 360

    from PIL import Image

    source_image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 40, 3), np.uint8))
    source_image.save(tmp_path / "a.png")
    predictions = train.predict(
        tiny_config(**{"predict.images": str(tmp_path / "a.png"), "predict.topk": 3}), tmp_path / "run"
    )
    names, probs = zip(*predictions[0], strict=True)
    assert len(names) == 3 and set(names) <= {str(d) for d in range(10)}
    assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_distillation_head_learns_the_teachers_argmax(tmp_path):
    """With a teacher, the loss is 0.5 CE(cls, labels) + 0.5 CE(dist, argmax teacher)."""
    import jax.numpy as jnp
    import optax

    teacher_model = vitjax.create_model("DeiT_test_patch8_32", num_classes=10)
    teacher_vars = teacher_model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
    vitjax.save_pdparams(teacher_vars, "DeiT_test_patch8_32", tmp_path / "teacher.pdparams")
    config = tiny_config(
        **{
            "model.name": "DeiT_test_distilled_patch8_32",
            "model.drop_path_rate": 0.0,
            "augment.mixup_alpha": 0.0,
            "augment.cutmix_alpha": 0.0,
            "augment.label_smoothing": 0.0,
            "distill.teacher": "DeiT_test_patch8_32",
            "distill.teacher_pdparams": str(tmp_path / "teacher.pdparams"),
        }
    )
    student = train.build_model(config.model)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    labels = jnp.asarray([1, 2, 3, 4])
    params = student.init(jax.random.key(0), images)["params"]
    tx = optax.sgd(0.0)
    step = train.make_train_step(student, tx, optax.constant_schedule(0.0), config, train._teacher(config))
    _, metrics = step(train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), images, labels)
    cls_logits, dist_logits = student.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)})
    teacher_top = jnp.argmax(teacher_model.apply(teacher_vars, images), -1)
    expected = (
        0.5 * optax.softmax_cross_entropy_with_integer_labels(cls_logits, labels).mean()
        + 0.5 * optax.softmax_cross_entropy_with_integer_labels(dist_logits, teacher_top).mean()
    )
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    train.train_and_evaluate(config.copy_and_resolve_references(), tmp_path / "run")  # and a whole run works


@pytest.mark.slow
def test_the_embedded_default_reaches_95_percent_on_held_out_digits(tmp_path):
    """The README's first command: `python -m vitjax.main --workdir DIR` with no config."""
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has
    result = subprocess.run(
        [sys.executable, "-m", "vitjax.main", "--workdir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from vitjax.kernels import onednn

    # the default job's model.matmul is "auto": oneDNN's matmuls where the kernel builds (measured faster for its loop)
    assert f"dense matmuls: {'onednn' if onednn.available() else 'xla'}" in result.stderr
    if mimalloc_library() and preload_plan(env) is not None:  # a CPU host on glibc, the wheel installed
        assert "host memory: mimalloc, preloaded by vitjax" in result.stderr  # started again on it, once
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals[-1]["count"] == 360 and evals[-1]["top1"] >= 0.95, evals[-1]


def test_prediction_names_come_from_imagenet_the_dataset_or_a_file(tmp_path):
    imagenet = train.class_names(tiny_config(), 1000)
    assert len(imagenet) == 1000 and imagenet[0].startswith("tench") and "goldfish" in imagenet[1]
    assert train.class_names(tiny_config(), 10) == [str(d) for d in range(10)]  # digits' own names
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert train.class_names(tiny_config(**{"data.class_names": str(tmp_path / "names.txt")}), 2) == ["cat", "dog"]
    with pytest.raises(ValueError, match="2 names for 3 classes"):
        train.class_names(tiny_config(**{"data.class_names": str(tmp_path / "names.txt")}), 3)


def test_per_image_recipes_travel_as_uint8_and_the_step_normalises_and_erases_as_the_host_does(tmp_path):
    """A recipe with RandAugment and random erasing (per image, on PIL) hands the step uint8 pixels
    with each image's erasing rectangle and noise, drawn on the host as before; the step normalises
    and erases on the device, so one update from that batch equals one from the per-image float32
    batch (same loss and parameters, to float32 rounding)."""
    c = tiny_config(
        **{
            "augment.mixup_alpha": 0.0,
            "augment.cutmix_alpha": 0.0,
            "augment.randaugment": "rand-m9-mstd0.5-inc1",
            "augment.random_erasing": 0.9,
        }
    )
    exp = train.Experiment(c, tmp_path)
    assert exp.erases_on_device
    uint8_batch, float_batch = exp.train_loader().batch(3), exp.train_loader(per_image=True).batch(3)
    assert uint8_batch.images.dtype == np.uint8 and float_batch.images.dtype == np.float32
    assert (uint8_batch.erase[:, 2] > 0).sum() >= 20  # most of the 32 images have a rectangle
    assert float_batch.erase is None
    with pytest.raises(ValueError, match="no erasing rectangles"):
        exp.step_inputs(float_batch)

    schedule = lr_schedule(c.optimizer, c.batch_size, 10.0, 100)
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, 2)
    _, shardings = train.train_state_layout(exp, tx)
    step = train.jitted_train_step(exp, tx, schedule, shardings)
    plain = jax.jit(
        train.make_train_step(exp.model, tx, schedule, c, None), in_shardings=(shardings, *[exp.batch_sharding] * 2)
    )
    results = []
    for batch_step, inputs in (
        (step, exp.step_inputs(uint8_batch)),
        (plain, exp.global_batch(float_batch.images, float_batch.labels)),
    ):
        state, metrics = batch_step(train.initial_state(exp, tx, shardings), *inputs)
        results.append((float(metrics["loss"]), flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert_params_close(results[0][1], results[1][1], atol=1e-6)


def test_batched_recipes_travel_as_uint8_and_the_step_normalises_them_as_the_host_does(tmp_path):
    """The digits recipe's loader hands the step uint8 pixels (a quarter of the bytes, no float pass
    on the host); the step normalises them on the device to what the per-image loader's float32
    batch holds (to one float32 step), so one update from either batch gives the same loss and
    parameters."""
    c = tiny_config(**{"augment.mixup_alpha": 0.0, "augment.cutmix_alpha": 0.0})
    exp = train.Experiment(c, tmp_path)
    uint8_batch, float_batch = exp.train_loader().batch(5), exp.train_loader(per_image=True).batch(5)
    assert uint8_batch.images.dtype == np.uint8 and float_batch.images.dtype == np.float32
    mean, std = vitjax.get_spec(c.model.name).eval_transform.mean, vitjax.get_spec(c.model.name).eval_transform.std
    on_device = np.asarray(normalize_on_device(uint8_batch.images, mean, std))
    # Equal to the last bit or one float32 step apart (XLA divides by the constant std as a multiplication).
    np.testing.assert_array_max_ulp(on_device, float_batch.images, maxulp=1)

    schedule = lr_schedule(c.optimizer, c.batch_size, 10.0, 100)
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, 2)
    _, shardings = train.train_state_layout(exp, tx)
    step = train.jitted_train_step(exp, tx, schedule, shardings)
    results = []
    for batch in (uint8_batch, float_batch):
        state, metrics = step(train.initial_state(exp, tx, shardings), *exp.global_batch(batch.images, batch.labels))
        results.append((float(metrics["loss"]), flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert_params_close(results[0][1], results[1][1], atol=1e-6)
