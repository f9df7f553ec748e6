"""What a run is built from, once per config: the mesh, the model, every parameter's
sharding, the data loaders and the jitted eval step.

The parameters are never materialised to find their layout: ``jax.eval_shape`` gives their
shapes, the config's sharding rules give each leaf a ``NamedSharding``, and
:meth:`Experiment.initial_params` creates them directly in that layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vitjax.data.augment import batch_transform_supported, train_transform, train_transform_batch
from vitjax.data.pipeline import Batch, EvalLoader, TrainLoader
from vitjax.data.sources import encoded, make_source
from vitjax.data.transforms import preprocess_eval
from vitjax.models.registry import EvalTransform, get_spec
from vitjax.training import checkpoints, sharding
from vitjax.training.model_init import build_model, image_shape, load_weights, merge_loaded
from vitjax.training.steps import make_eval_step


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


class Experiment:
    """Everything a run needs, built once from the config: mesh, model, shardings, loaders."""

    def __init__(self, config, workdir: str | Path):
        self.config, self.workdir = config, Path(workdir).absolute()
        self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
        self.model = build_model(config.model, train=True, num_devices=self.mesh.size)
        self.eval_model = build_model(config.model, train=False, num_devices=self.mesh.size)
        self.shape = image_shape(self.model)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = NamedSharding(self.mesh, P())
        dummy = jax.ShapeDtypeStruct((1, *self.shape), jnp.float32)
        self.abstract_params = jax.eval_shape(self.model.init, jax.random.key(0), dummy)["params"]
        self.rules = [(pattern, tuple(spec)) for pattern, spec in config.sharding.rules]
        self.param_shardings = jax.tree.map(
            lambda spec: NamedSharding(self.mesh, spec),
            sharding.param_specs(self.abstract_params, self.mesh, config.sharding.strategy, self.rules),
        )

    # Parameters ------------------------------------------------------------------------

    def initial_params(self) -> Any:
        """Fresh parameters (``config.seed``) with init.pdparams / init.pretrained /
        init.checkpoint laid over them, in the sharded layout."""
        c = self.config
        init = jax.jit(
            lambda key: self.model.init(key, jnp.zeros((1, *self.shape)))["params"], out_shardings=self.param_shardings
        )
        fresh = init(jax.random.key(c.seed))
        loaded = load_weights(
            c.model, c.init.pdparams, c.init.checkpoint, c.init.head, c.seed, c.init.pretrained, c.init.use_ema
        )
        if loaded is None:
            return fresh
        return to_global(merge_loaded(jax.tree.map(to_host, fresh), loaded), self.param_shardings)

    def params_for_inference(self) -> Any:
        """Weights for eval/predict: init.pdparams / init.pretrained / init.checkpoint, else the
        workdir's latest checkpoint (its EMA with ``init.use_ema``)."""
        c = self.config
        loaded = load_weights(
            c.model, c.init.pdparams, c.init.checkpoint, c.init.head, c.seed, c.init.pretrained, c.init.use_ema
        )
        if loaded is None:
            loaded = dict(checkpoints.load_variables(self.workdir, ema=c.init.use_ema)["params"])
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), self.abstract_params)
        return to_global(merge_loaded(zeros, loaded), self.param_shardings)

    # Data -------------------------------------------------------------------------------

    def global_batch(self, images: np.ndarray, *rest: np.ndarray) -> tuple[jax.Array, ...]:
        """This process's slice of a batch, as global arrays split along the mesh's data axis."""
        return tuple(jax.make_array_from_process_local_data(self.batch_sharding, a) for a in (images, *rest))

    @property
    def erases_on_device(self) -> bool:
        """Whether :meth:`train_loader`'s batches carry random erasing's rectangles and noise for the
        step to put in (a per-image recipe with ``augment.random_erasing`` > 0): the step then takes
        them as two more arguments (:meth:`step_inputs`)."""
        c = self.config
        return c.augment.random_erasing > 0 and not batch_transform_supported(c.augment)

    def step_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        """What the jitted training step takes after the state, as global arrays: the images and
        labels, and with :attr:`erases_on_device` the erasing rectangles and their noise."""
        if not self.erases_on_device:
            return self.global_batch(batch.images, batch.labels)
        if batch.erase is None:
            raise ValueError("this recipe erases on the device, but the batch carries no erasing rectangles")
        return self.global_batch(batch.images, batch.labels, batch.erase, batch.erase_noise)

    def train_loader(self, per_image: bool = False) -> TrainLoader:
        """The augmented training stream (``loader.source`` is its dataset). A model with fewer
        classes than the data is a ``ValueError``.

        Where the recipe has no per-image PIL step (:func:`batch_transform_supported`), the loader
        augments a whole batch per call (:func:`train_transform_batch`: the same pixels from the
        same per-position generators, without most of Python's per-image overhead; the digits job's
        loop runs 1.34x faster) and leaves the batch uint8: the jitted step normalises it
        (:func:`vitjax.training.steps.normalize_on_device`). ``per_image=True`` keeps the per-image
        transform and its float32 batches (benchmarks)."""
        c = self.config
        source = make_source(c.data, train=True, img_size=self.shape[0])
        if c.model.num_classes < source.num_classes:
            raise ValueError(f"model.num_classes={c.model.num_classes} but the data has {source.num_classes} classes")
        size, t = self.shape[0], get_spec(c.model.name).eval_transform
        batched = not per_image and batch_transform_supported(c.augment)
        if c.data.reduced_decode and not batched:  # files decoded in the transform, at the scale its crop allows
            source = encoded(source)
        batch_transform = None
        if batched:  # uint8 out: the jitted step normalises
            batch_transform = functools.partial(
                train_transform_batch, size=size, mean=t.mean, std=t.std, augment=c.augment, normalize_images=False
            )
        normalize_image = per_image or batched  # else uint8 out, with random erasing's draws: the step finishes
        return TrainLoader(
            source,
            lambda image, rng: train_transform(
                image, rng, size=size, mean=t.mean, std=t.std, augment=c.augment, normalize_image=normalize_image
            ),
            c.batch_size,
            seed=c.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            on_bad_image=c.data.on_bad_image,
            num_workers=c.data.num_workers,
            worker_kind=c.data.worker_kind,
            batch_transform=batch_transform,
        )

    def eval_transform(self) -> EvalTransform:
        """The family's resize/crop/normalisation, scaled to the model's resolution, with
        ``data.eval_resize_short`` / ``data.eval_crop_size`` overriding."""
        spec = get_spec(self.config.model.name)
        t = spec.eval_transform
        size = self.shape[0]
        if size != spec.img_size:  # a new resolution keeps the family's resize/crop ratio
            t = EvalTransform(round(t.resize_short * size / t.crop_size), size, t.interpolation, t.mean, t.std)
        d = self.config.data
        return EvalTransform(
            d.eval_resize_short or t.resize_short, d.eval_crop_size or t.crop_size, t.interpolation, t.mean, t.std
        )

    @functools.cached_property
    def eval_loader(self) -> EvalLoader:
        """The evaluation set, every example once; built on first use and reused."""
        c, t = self.config, self.eval_transform()
        source = make_source(c.data, train=False, img_size=self.shape[0])
        return EvalLoader(
            source,
            lambda image, rng: preprocess_eval(image, t),
            c.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            on_bad_image=c.data.on_bad_image,
            num_workers=c.data.num_workers,
            worker_kind=c.data.worker_kind,
        )

    # Steps --------------------------------------------------------------------------------

    @functools.cached_property
    def eval_step(self) -> Callable:
        """Jitted once per experiment, so periodic evaluations do not recompile."""
        return jax.jit(make_eval_step(self.eval_model), out_shardings=self.replicated)
