"""The fine-tuning recipe: layer-wise learning-rate decay (checked against timm's own
``param_groups_layer_decay``), EMA of the parameters, gradient accumulation, and their errors."""

import jax
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

import vitjax
from vitjax.training.config import base_config
from vitjax.training.optim import lr_multipliers, make_optimizer


def _abstract_params(name: str):
    size = vitjax.get_spec(name).img_size
    shapes = jax.eval_shape(vitjax.create_model(name).init, jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    return shapes["params"]


def _opt_config(**fields):
    c = base_config().optimizer
    c.update(fields)
    return c


# --- layer-wise learning-rate decay --------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["DeiT_tiny_patch16_224", "DeiT_small_distilled_patch16_224", "TNT_small"], ids=lambda n: n
)
@pytest.mark.parametrize("decay", [0.75, 0.65])
def test_layer_decay_scales_equal_timms_param_groups_layer_decay(name, decay):
    """Every parameter's scale, ours vs timm's, through the PaddleClas key table (timm's keys
    are PaddleClas's for DeiT and TNT)."""
    pytest.importorskip("timm")
    import timm
    import torch
    from timm.optim import param_groups_layer_decay

    from benchmarks.timm_peer import timm_name
    from vitjax.weights.mapping import key_table

    with torch.device("meta"):
        model = timm.create_model(timm_name(name), pretrained=False)
    names = {id(p): n for n, p in model.named_parameters()}
    theirs = {}
    for group in param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay):
        for param in group["params"]:
            theirs[names[id(param)]] = group["lr_scale"]

    params = _abstract_params(name)
    depth = vitjax.get_spec(name).arch.depth
    ours = flatten_dict(lr_multipliers(params, _opt_config(layer_decay=decay), depth))
    table = key_table(name)
    assert {rule.paddle_key for rule in table} == set(theirs)
    assert {rule.flax_path for rule in table} == set(ours)
    for rule in table:
        assert ours[rule.flax_path] == pytest.approx(theirs[rule.paddle_key], rel=1e-12), rule.paddle_key
    assert len(set(theirs.values())) == depth + 2  # stem, every block (final norm with the last), head


def test_layer_decay_scales_each_update_by_its_layers_factor():
    name = "DeiT_test_patch8_32"
    model = vitjax.create_model(name, num_classes=10)
    params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    grads = jax.tree.map(lambda p: np.random.RandomState(p.size).standard_normal(p.shape).astype(np.float32), params)
    depth = vitjax.get_spec(name).arch.depth
    updates = {}
    for decay in (0.0, 0.5):
        c = _opt_config(layer_decay=decay, weight_decay=0.05)
        tx = make_optimizer(c, optax.constant_schedule(1e-3), params, depth)
        updates[decay] = flatten_dict(tx.update(grads, tx.init(params), params)[0], sep="/")
    scales = flatten_dict(lr_multipliers(params, _opt_config(layer_decay=0.5), depth), sep="/")
    assert scales["head/kernel"] == 1.0 and scales["norm/scale"] == 0.5 and scales["pos_embed"] == 0.5 ** (depth + 1)
    for key, scale in scales.items():
        np.testing.assert_allclose(updates[0.5][key], scale * updates[0.0][key], rtol=1e-6, err_msg=key)


def test_lr_mults_multiply_matching_parameters_and_an_unknown_pattern_is_an_error():
    params = _abstract_params("DeiT_test_patch8_32")
    scales = flatten_dict(lr_multipliers(params, _opt_config(lr_mults=(("^head", 10.0), ("bias$", 0.5))), 2), sep="/")
    assert scales["head/kernel"] == 10.0 and scales["head/bias"] == 5.0 and scales["pos_embed"] == 1.0
    with pytest.raises(ValueError, match=r"lr_mults: 'blocks_9/attn' matches no parameter; parameter paths look like"):
        lr_multipliers(params, _opt_config(lr_mults=(("blocks_9/attn", 0.1),)), 2)
    with pytest.raises(ValueError, match=r"optimizer.layer_decay=1.5: expected 0 \(off\) or a value in \(0, 1\]"):
        lr_multipliers(params, _opt_config(layer_decay=1.5), 2)
    assert lr_multipliers(params, _opt_config(), 2) is None


# --- gradient accumulation ------------------------------------------------------------------


def tiny_config(**overrides):
    """Digits, the test-size DeiT, no dropout: seconds per run."""
    c = base_config()
    c.model.update(name="DeiT_test_patch8_32", num_classes=10, drop_path_rate=0.0, matmul="xla")
    c.augment.update(crop_scale=(0.7, 1.0), hflip=False, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0)
    c.optimizer.update(base_lr=1e-3, lr_batch_base=32, warmup_epochs=0.1, min_lr=1e-5)
    c.update(batch_size=32, eval_batch_size=360, num_steps=6, log_every=2, checkpoint_every=3, plot=False)
    c.data.num_workers = 1
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


def _one_update(tmp_path, **overrides):
    """Parameters before and after one jitted training step on a fixed batch, and its metrics."""
    from vitjax.training import train
    from vitjax.training.experiment import to_host

    c = tiny_config(**overrides)
    exp = train.Experiment(c, tmp_path)
    schedule = optax.constant_schedule(0.1)
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params, 2)
    _, shardings = train.train_state_layout(exp, tx)
    state = train.initial_state(exp, tx, shardings)
    before = flatten_dict(jax.tree.map(to_host, state.params), sep="/")
    rng = np.random.RandomState(0)
    images = rng.standard_normal((c.batch_size, 32, 32, 3)).astype(np.float32)
    labels = rng.randint(0, 10, c.batch_size).astype(np.int32)
    step = train.jitted_train_step(exp, tx, schedule, shardings)
    state, metrics = step(state, *exp.global_batch(images, labels))
    after = flatten_dict(jax.tree.map(to_host, state.params), sep="/")
    return before, after, {k: float(to_host(v)) for k, v in metrics.items()}


@pytest.mark.parametrize("data_devices", [1, 8])
def test_k_micro_batches_give_the_update_of_one_batch_of_k_times_b(tmp_path, data_devices):
    """Mixup/CutMix on (they mix the whole batch before it is cut), dropout off, momentum SGD so
    that the update is linear in the gradient."""
    common = {"mesh.data": data_devices, "optimizer.name": "momentum", "optimizer.weight_decay": 1e-4}
    before, big, big_metrics = _one_update(tmp_path / "big", **common)
    _, accumulated, metrics = _one_update(tmp_path / "accum", accum_steps=4, **common)
    assert metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-6)
    assert metrics["grad_norm"] == pytest.approx(big_metrics["grad_norm"], rel=1e-5)
    for key in before:
        step_big, step_accum = big[key] - before[key], accumulated[key] - before[key]
        # float32 tolerance: the gradients' sums in another order, and the parameters' own rounding
        tolerance = 1e-5 * np.abs(step_big).max() + 2 * np.spacing(np.abs(before[key]).astype(np.float32))
        assert np.all(np.abs(step_accum - step_big) <= tolerance), key


def test_accumulated_step_needs_the_memory_of_one_micro_batch():
    """XLA's compiled memory analysis: the temporaries (activations) of 4 micro-batches of 8 are
    those of one batch of 8, plus the gradient accumulator, not those of a batch of 32."""
    from vitjax.training.steps import TrainState, make_train_step

    model = vitjax.create_model("DeiT_test_patch8_32", num_classes=10)
    params = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    param_bytes = sum(p.size * 4 for p in jax.tree.leaves(params))
    tx = optax.adamw(1e-3)
    state = jax.eval_shape(lambda p: TrainState(np.int32(0), p, tx.init(p)), params)

    def temp_bytes(batch, accum):
        c = tiny_config(accum_steps=accum, **{"augment.mixup_alpha": 0.0, "augment.cutmix_alpha": 0.0})
        step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-3), c, None))
        images = jax.ShapeDtypeStruct((batch, 32, 32, 3), np.float32)
        labels = jax.ShapeDtypeStruct((batch,), np.int32)
        return step.lower(state, images, labels).compile().memory_analysis().temp_size_in_bytes

    one_micro, big, accumulated = temp_bytes(8, 1), temp_bytes(32, 1), temp_bytes(32, 4)
    assert big > 3 * one_micro
    assert accumulated <= one_micro + 3 * param_bytes, (one_micro, big, accumulated, param_bytes)


@pytest.mark.parametrize("accum, devices", [(3, 1), (0, 1), (8, 8)])
def test_accum_steps_that_do_not_split_the_batch_are_refused_before_any_checkpoint(tmp_path, accum, devices):
    from vitjax.training import train

    c = tiny_config(accum_steps=accum, **{"mesh.data": devices})
    with pytest.raises(ValueError, match=rf"^accum_steps={accum} does not split batch_size=32.*: expected one of 1, "):
        train.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# --- EMA ------------------------------------------------------------------------------------


def test_ema_decay_follows_timms_model_ema_v3():
    pytest.importorskip("timm")
    import torch
    from timm.utils.model_ema import ModelEmaV3

    from vitjax.training.steps import ema_decay

    for warmup in (False, True):
        c = base_config().ema
        c.update(decay=0.999, warmup=warmup)
        theirs = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.999, use_warmup=warmup)
        for step in (1, 2, 3, 10, 100, 1000, 100000):
            assert float(ema_decay(c, step)) == pytest.approx(theirs.get_decay(step), rel=1e-6, abs=1e-7), step


def _checkpointed(workdir, step, ema=False):
    from vitjax.training import checkpoints

    return flatten_dict(checkpoints.load_variables(workdir, step=step, ema=ema)["params"], sep="/")


def test_ema_is_the_running_average_of_the_checkpointed_parameters_and_is_evaluated_beside_them(tmp_path):
    import json

    from vitjax.training import train
    from vitjax.training.steps import ema_decay

    c = tiny_config(num_steps=4, checkpoint_every=1, keep_checkpoints=10, **{"ema.decay": 0.6, "ema.warmup": True})
    train.train_and_evaluate(c, tmp_path)
    ema = _checkpointed(tmp_path, 1)  # the first update copies the parameters
    for step in range(1, 5):
        params = _checkpointed(tmp_path, step)
        if step > 1:
            d = float(ema_decay(c.ema, step))
            ema = {k: d * ema[k] + (1 - d) * params[k] for k in params}
        saved = _checkpointed(tmp_path, step, ema=True)
        for key in params:
            np.testing.assert_allclose(saved[key], ema[key], rtol=0, atol=1e-6, err_msg=f"step {step} {key}")
    assert any(np.abs(saved[k] - params[k]).max() > 1e-5 for k in params)  # really an average
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["kind"] == "eval"][-1]
    assert {"top1", "ema_top1", "ema_top5"} <= set(final)

    # eval mode takes the EMA when asked, and gets the top-1 the run logged for it
    ev = tiny_config(mode="eval", **{"init.use_ema": True})
    assert train.evaluate(ev, tmp_path)["top1"] == pytest.approx(final["ema_top1"])


def test_resuming_after_the_last_checkpoint_is_lost_gives_the_uninterrupted_ema(tmp_path):
    """What kill -9 leaves: checkpoints up to some step. The rerun must end where an
    uninterrupted run ends, EMA included (bit for bit)."""
    import shutil

    from vitjax.training import train

    c = tiny_config(num_steps=6, checkpoint_every=3, **{"ema.decay": 0.9, "ema.warmup": True})
    train.train_and_evaluate(c, tmp_path / "straight")
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "6")  # as if killed between steps 3 and 6
    train.train_and_evaluate(c, tmp_path / "killed")
    for ema in (False, True):
        a, b = _checkpointed(tmp_path / "killed", 6, ema), _checkpointed(tmp_path / "straight", 6, ema)
        assert all(np.array_equal(a[k], b[k]) for k in a), ema


def test_ema_asked_of_a_checkpoint_without_one_is_a_one_line_error_and_exit_1(tmp_path):
    import subprocess
    import sys

    from vitjax.training import train

    train.train_and_evaluate(tiny_config(num_steps=1), tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "vitjax.main", "--workdir", str(tmp_path / "run"), "--config.mode=eval"]
        + ["--config.init.use_ema=True", "--config.model.name=DeiT_test_patch8_32", "--config.model.num_classes=10"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "checkpoint has no EMA weights (it was trained with ema.decay=0); use its raw weights "
            "(init.use_ema=False) or train with ema.decay > 0"
        )
    )


# --- the fine-tuning configs ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["deit", "tnt"])
def test_finetune_config_trains_on_an_image_folder_with_every_part_on(tmp_path, family):
    """The config as a user loads it (``path:NUM_CLASSES``), on its family's test-size model
    without downloads: layer decay, EMA, accumulation, warm-up + cosine all in one short run."""
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    from vitjax.training import train

    rng = np.random.RandomState(0)
    for split, count in (("train", 8), ("val", 2)):
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.randint(0, 255, (40, 30, 3), np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{i}.png")
    path = Path(__file__).resolve().parents[2] / "configs" / f"finetune_{family}_small.py"
    spec = importlib.util.spec_from_file_location(f"finetune_{family}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("2")  # what --config path:2 passes
    assert (c.model.num_classes, c.init.pretrained, c.init.head, c.data.source) == (2, True, "reinit", "folder")
    assert c.optimizer.layer_decay and c.ema.decay and c.accum_steps > 1 and c.optimizer.schedule == "cosine"
    c.model.name = {"deit": "DeiT_test_patch8_32", "tnt": "TNT_test_patch16_32"}[family]
    c.update(batch_size=8, accum_steps=4, num_steps=3, eval_batch_size=4, log_every=1, plot=False)
    c.init.pretrained = False
    c.augment.randaugment = ""
    c.data.update(root=str(tmp_path / "data"), num_workers=0)
    c.model.matmul = "xla"
    c.mesh.data = 2
    results = train.train_and_evaluate(c, tmp_path / "run")
    assert {"top1", "ema_top1"} <= set(results) and results["count"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_ema(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from vitjax.training import checkpoints

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["--config.batch_size=32", "--config.num_steps=40", "--config.checkpoint_every=10", "--config.plot=False"]
    args += [
        "--config.data.num_workers=1",
        "--config.ema.decay=0.9",
        "--config.ema.warmup=True",
        "--config.accum_steps=2",
    ]

    def command(workdir):
        return [sys.executable, "-m", "vitjax.main", "--workdir", str(workdir), *args]

    assert subprocess.run(command(tmp_path / "straight"), env=env, capture_output=True, timeout=900).returncode == 0
    process = subprocess.Popen(
        command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not (tmp_path / "killed" / "checkpoints" / "10" / "_CHECKPOINT_METADATA").exists():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints.latest_step(tmp_path / "killed") < 40
    rerun = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0 and "resumed" in rerun.stderr, rerun.stderr
    for ema in (False, True):
        a, b = _checkpointed(tmp_path / "killed", 40, ema), _checkpointed(tmp_path / "straight", 40, ema)
        assert all(np.array_equal(a[k], b[k]) for k in a), ema


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.optimizer.lr_mults=(('blocks_99', 0.1),)",
            "error: optimizer.lr_mults: 'blocks_99' matches no parameter",
        ),
        (
            "--config.accum_steps=3",
            "error: accum_steps=3 does not split batch_size=32",
        ),
    ],
)
def test_bad_fine_tuning_settings_exit_1_with_one_line_and_write_no_checkpoint(tmp_path, override, message):
    import subprocess
    import sys

    command = [sys.executable, "-m", "vitjax.main", "--workdir", str(tmp_path), "--config.batch_size=32", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "checkpoints").exists()


def test_bf16_compute_keeps_parameters_optimizer_state_and_ema_in_float32(tmp_path):
    from vitjax.training import train

    c = tiny_config(num_steps=1, accum_steps=2, **{"model.dtype": "bfloat16", "ema.decay": 0.9})
    exp = train.Experiment(c, tmp_path)
    tx = make_optimizer(c.optimizer, optax.constant_schedule(1e-3), exp.abstract_params, 2)
    abstract_state, _ = train.train_state_layout(exp, tx)
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract_state.params)} == {np.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract_state.ema_params)} == {np.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract_state.opt_state) if leaf.ndim} == {np.dtype("float32")}
    train.train_and_evaluate(c, tmp_path)
    for ema in (False, True):
        assert {v.dtype for v in _checkpointed(tmp_path, 1, ema).values()} == {np.dtype("float32")}


def test_resuming_with_the_ema_switched_is_a_one_line_error_naming_both_sides(tmp_path):
    from vitjax.training import train
    from vitjax.training.checkpoints import CheckpointError

    train.train_and_evaluate(tiny_config(num_steps=1, **{"ema.decay": 0.5}), tmp_path)
    with pytest.raises(
        CheckpointError, match=r"holds ema_params, opt_state, params, step but this config trains opt_state"
    ):
        train.train_and_evaluate(tiny_config(num_steps=2), tmp_path)
