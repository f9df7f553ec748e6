"""Deterministic, host-sharded batching over a random-access source, built on grain.

Training reads an endless stream: epoch ``e`` visits the examples in the order of a
permutation seeded by ``(seed, e)``, and the example at stream position ``p`` is
augmented with a generator seeded by ``(seed, p)``. The global batch of step ``s`` is
stream positions ``[s * B, (s + 1) * B)``; host ``h`` of ``H`` reads only its
contiguous ``B / H`` slice. So a batch is a pure function of the step: a resumed run,
or the same run on another number of hosts, sees exactly the same data, and no
iterator state needs to be checkpointed.

The stream is a ``grain.MapDataset`` (random access, so ``dataset[s]`` *is* the batch of
step ``s``)::

    range(host positions) -> map(stream order: position -> (example index, position))
                          -> map(read, replace a bad image, augment with rng(seed, position))
                          -> batch(B / H)

and :meth:`TrainLoader.iterate` reads it from the resumed step on with ``num_workers``
workers of one of two kinds:

* ``"threads"``: ``to_iter_dataset`` with a thread pool over *examples*, about one batch
  read ahead. PIL decodes and resizes with the GIL released, so threads scale until the
  Python parts of augmentation (RandAugment's dispatch, numpy glue) saturate one core.
* ``"processes"``: ``mp_prefetch``: each of ``num_workers`` spawned processes builds whole
  batches ``k, k + n, k + 2n, ...`` and grain interleaves them back in step order. It
  scales past the GIL on many-core hosts, at the price of a start-up (each worker imports
  the transform's modules) and of pickling every float32 batch back to the trainer.

With a ``batch_transform`` (``TrainLoader.with_batch_transform``: a recipe without per-image
PIL steps, e.g. the digits job), element ``s`` reads its examples in one call and augments
them in one numpy call, each image with its own ``(seed, position)`` generator (the batch's
generators built at once, :mod:`vitjax.data.seeding`), and the thread workers build whole
batches, two ahead: the same batches, without grain's and Python's per-image overhead, which
dominates for small images.

Both give the same batches as ``dataset[s]`` (tested). ``iterate(start, place=f)`` hands out
``f(batch)`` instead, computed one batch ahead by a thread of its own: the training loop passes
``Experiment.step_inputs``, so batches reach the devices while the previous step runs.
``benchmarks/loader.py`` measures the two as workers grow (``benchmarks/results/loader.md``). On the 2-core development
machine (Intel Xeon, 2026-12-06), with the DeiT recipe on 500x375 JPEGs: one core alone 275
img/s; threads 280 / 466 / 461 img/s with 1 / 2 / 4 workers, level with the hand-written thread
pool this module replaced (262 / 462 / 463), so grain costs nothing here; processes 230 / 369 /
352 img/s, because every float32 batch is pickled by a worker and unpickled by the trainer
(19 MB at batch 32, 0.2-0.3 of a core) on the same two cores. That overhead buys scaling past the
GIL, which pays on many-core hosts, not on two cores: hence threads are the default.

A corrupt or unreadable image is either fatal (``on_bad_image="fail"``: the error
names the file, raised from whichever worker met it) or skipped (``"skip"``): the
training stream replaces it by the next readable example, deterministically, and
evaluation masks it out. Workers send the messages of skipped images along with their
batch; the loader logs and counts them in :attr:`TrainLoader.bad_images` as it hands the
batch out, so the count is the same for threads and processes.

``grain`` is imported when a loader is built, not when this module is imported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from vitjax.data.augment import NO_ERASE, NO_NOISE, ErasedImage, erase_noise
from vitjax.data.seeding import position_generators
from vitjax.data.sources import DataError, Source
from vitjax.data.transforms import ImageError

# One image: uint8 HWC (an array, or ``EncodedImage`` from an ``EncodedSource``) -> float32 HWC, or an
# ``augment.ErasedImage`` (uint8 pixels, an erasing rectangle and its noise, for the device to normalise and erase).
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray | ErasedImage]
# A whole batch at once: equally sized uint8 images [B, H, W, C] and one generator per image,
# giving exactly what ``Transform`` gives image by image (``augment.train_transform_batch``).
BatchTransform = Callable[[np.ndarray, list[np.random.Generator]], np.ndarray]

WORKER_KINDS = ("threads", "processes")
# Stream positions of a training run are numbered below this (far more than any run reads).
_STREAM_LENGTH = 2**62
# How many following examples a bad training image may be replaced by before giving up.
_MAX_REPLACEMENTS = 100


def _grain():
    """The grain package, imported on first use: it takes ~0.7 s to import here, which
    ``import vitjax`` (and ``vitjax.data.pipeline``) should not pay."""
    import grain

    return grain


def _absl_flags_parsed() -> None:
    """grain 0.2.18's ``mp_prefetch`` reads one of its absl flags directly and fails with
    ``UnparsedFlagAccessError`` in a program that never parsed absl flags (a library user,
    pytest). Such a program gets the flags' defaults; ``vitjax.main`` has parsed them already."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass
class Batch:
    images: np.ndarray  # [local_batch, H, W, C] float32, or uint8 from a batch transform left for the device
    labels: np.ndarray  # [local_batch] int32
    mask: np.ndarray  # [local_batch] bool; False for eval padding and dropped bad images
    skipped: tuple[str, ...] = ()  # messages of the bad images met while building this batch
    # From a transform that leaves normalisation and random erasing to the device (uint8 images,
    # ``augment.train_transform(..., normalize_image=False)``): each image's erasing rectangle,
    # [local_batch, 4] int32 (top, left, height, width), and its noise, [local_batch, L] float32
    # zero-padded (``augment.erase_noise``), for ``augment.fill_erased``; else None.
    erase: np.ndarray | None = None
    erase_noise: np.ndarray | None = None


class BadImageLog:
    """Applies ``data.on_bad_image``: ``"fail"`` raises, ``"skip"`` logs and counts."""

    def __init__(self, policy: str):
        check_policy(policy)
        self.policy = policy
        self.skipped: list[str] = []

    def record(self, error: ImageError | str) -> None:
        if self.policy == "fail":
            raise error if isinstance(error, ImageError) else ImageError(error)
        self.skipped.append(str(error))
        logging.warning("skipped a bad image (%d so far): %s", len(self.skipped), error)

    def record_batch(self, batch: Batch | _Placed) -> Batch | _Placed:
        """Records the bad images a worker met while building ``batch``, and returns it."""
        for message in batch.skipped:
            self.record(message)
        return batch


def check_policy(policy: str) -> str:
    if policy not in ("skip", "fail"):
        raise DataError(f"data.on_bad_image must be 'skip' or 'fail', not {policy!r}")
    return policy


def check_workers(num_workers: int, worker_kind: str) -> None:
    if worker_kind not in WORKER_KINDS:
        raise DataError(f"data.worker_kind must be one of {', '.join(WORKER_KINDS)}, not {worker_kind!r}")
    if num_workers < 0:
        raise DataError(f"data.num_workers must be >= 0, not {num_workers}")


@dataclasses.dataclass(frozen=True)
class _Example:
    image: np.ndarray | ErasedImage | None  # None: a bad eval image or padding, masked out
    label: int
    skipped: tuple[str, ...]
    position: int = 0  # the stream position whose generator augments it


class _StreamOrder:
    """Stream position ``p`` -> ``(example index, p)``: epoch ``p // n`` visits the ``n``
    examples in a permutation seeded by ``(seed, epoch)``."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed = num_examples, seed
        self._cached: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    def permutation(self, epoch: int) -> np.ndarray:
        cached = self._cached  # one read: safe when threads race to replace it
        if cached[0] != epoch:
            order = np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(self.num_examples)
            cached = self._cached = (epoch, order)
        return cached[1]

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.num_examples)
        return int(self.permutation(epoch)[offset]), position

    def __getstate__(self) -> dict[str, Any]:  # workers compute their own permutations
        return {"num_examples": self.num_examples, "seed": self.seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["num_examples"], state["seed"])


class _EvalOrder:
    """Position ``p`` -> ``(p, p)`` for the examples, ``(None, p)`` for the padding after them."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def __call__(self, position: int) -> tuple[int | None, int]:
        return (position if position < self.num_examples else None), position


class _ReadExample:
    """``(example index, stream position)`` -> the transformed example, augmented with a
    generator seeded by ``(seed, position)``. A bad image raises (policy ``fail``), is
    replaced by the next readable example (training), or is dropped (evaluation). Without a
    ``transform`` the image is returned as read (a batch transform augments it later)."""

    def __init__(self, source: Source, transform: Transform | None, seed: int, policy: str, replace_bad: bool):
        self.source, self.transform, self.seed = source, transform, seed
        self.policy, self.replace_bad = policy, replace_bad

    def __call__(self, index_and_position: tuple[int | None, int]) -> _Example:
        index, position = index_and_position
        if index is None:
            return _Example(None, 0, ())
        n = len(self.source)
        skipped: list[str] = []
        for attempt in range(min(n, _MAX_REPLACEMENTS) if self.replace_bad else 1):
            try:
                image, label = self.source.load((index + attempt) % n)
                if self.transform is None:
                    return _Example(image, label, tuple(skipped), position)
                # An undecoded image (data.reduced_decode) meets its bad pixels here, in the transform.
                image = self.transform(image, np.random.default_rng([self.seed, position]))
            except ImageError as e:
                if self.policy == "fail":
                    raise
                skipped.append(str(e))
                continue
            return _Example(image, label, tuple(skipped), position)
        if not self.replace_bad:
            return _Example(None, 0, tuple(skipped))
        raise DataError(f"no readable image among {_MAX_REPLACEMENTS} examples from {self.source.describe(index)}")


def _assemble(examples: Sequence[_Example]) -> Batch:
    """Stacks examples into a :class:`Batch`; dropped ones become masked zero images."""
    good = next((e.image for e in examples if e.image is not None), None)
    if good is None:
        raise DataError(
            f"no readable image in a batch of {len(examples)} examples: "
            + "; ".join(s for e in examples for s in e.skipped)[:2000]
        )
    erase = noise = None
    if isinstance(good, ErasedImage):  # uint8 pixels, erasing rectangles and noise: the device normalises and erases
        blank = ErasedImage(np.zeros_like(good.image), NO_ERASE, NO_NOISE)
        erased = [e.image if e.image is not None else blank for e in examples]
        images = np.stack([e.image for e in erased])
        erase, noise = np.stack([e.erase for e in erased]), erase_noise(erased)
    else:
        images = np.stack([e.image if e.image is not None else np.zeros_like(good) for e in examples])
    labels = np.asarray([e.label for e in examples], np.int32)
    mask = np.asarray([e.image is not None for e in examples])
    return Batch(images, labels, mask, tuple(s for e in examples for s in e.skipped), erase, noise)


class _AssembleTransformed:
    """Raw examples -> a :class:`Batch` augmented by ``batch_transform`` in one call, each
    image with the generator of its stream position; a batch of unequal image sizes goes
    through ``batch_transform`` one image at a time (the same pixels and dtype)."""

    def __init__(self, batch_transform: BatchTransform, seed: int):
        self.batch_transform, self.seed = batch_transform, seed

    def __call__(self, examples: Sequence[_Example]) -> Batch:
        rngs = position_generators(self.seed, [e.position for e in examples])
        shapes = {e.image.shape for e in examples}
        if len(shapes) == 1:
            images = self.batch_transform(np.stack([e.image for e in examples]), rngs)
        else:  # one image at a time, still through batch_transform (its dtype, its pixels)
            images = np.concatenate(
                [self.batch_transform([e.image], [rng]) for e, rng in zip(examples, rngs, strict=True)]
            )
        labels = np.asarray([e.label for e in examples], np.int32)
        mask = np.ones(len(examples), bool)
        return Batch(images, labels, mask, tuple(s for e in examples for s in e.skipped))


class _ReadBatch:
    """Step -> its :class:`Batch`: this host's examples read in order, then assembled."""

    def __init__(self, positions, order, read: _ReadExample, per_host: int, assemble):
        self.positions, self.order, self.read, self.per_host, self.assemble = positions, order, read, per_host, assemble

    def __call__(self, step: int) -> Batch:
        first = step * self.per_host
        return self.assemble([self.read(self.order(self.positions(j))) for j in range(first, first + self.per_host)])


def _host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise DataError(f"batch size {global_batch} is not divisible by the {process_count} processes")
    per_host = global_batch // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


class _HostPositions:
    """The ``j``-th example this host reads -> its global stream position: host ``h`` reads
    positions ``[s * B + h * b, s * B + (h + 1) * b)`` of step ``s`` (``b = B / H``)."""

    def __init__(self, global_batch: int, host_slice: slice):
        self.global_batch, self.first, self.per_host = (
            global_batch,
            host_slice.start,
            host_slice.stop - host_slice.start,
        )

    def __call__(self, j: int) -> int:
        step, offset = divmod(j, self.per_host)
        return step * self.global_batch + self.first + offset


class _Loader:
    """The grain pipeline shared by training and evaluation: ``examples`` (a MapDataset of
    :class:`_Example`, this host's share in stream order) batched ``per_host`` at a time."""

    def __init__(
        self,
        examples,
        per_host: int,
        bad_images: BadImageLog,
        num_workers: int,
        worker_kind: str,
        assemble: Callable[[Sequence[_Example]], Batch] | None = None,
    ):
        check_workers(num_workers, worker_kind)
        self.examples, self.per_host, self.bad_images = examples, per_host, bad_images
        self.num_workers, self.worker_kind = num_workers, worker_kind
        self.batch_level = assemble is not None  # workers build whole batches
        self.batches = examples.batch(per_host, drop_remainder=True, batch_fn=assemble or _assemble)

    def read(self, step: int) -> Batch:
        return self.bad_images.record_batch(self.batches[step])

    def stream(self, start: int, stop: int, place: Callable[[Batch], Any] | None = None) -> Iterator[Any]:
        """Batches ``start`` to ``stop - 1``, read ahead by the workers (started at once);
        closing the returned generator stops them. With ``place``, ``place(batch)`` is handed out
        instead of each batch, computed one batch ahead by a thread of its own when there are workers."""
        grain = _grain()
        if self.worker_kind == "processes" and self.num_workers > 0:
            _absl_flags_parsed()
            iter_dataset = (
                self.batches[start:stop]
                .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
                .mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=1))
            )
        elif self.batch_level:  # each thread builds whole batches; two read ahead
            iter_dataset = self.batches[start:stop].to_iter_dataset(
                grain.ReadOptions(num_threads=self.num_workers, prefetch_buffer_size=2 if self.num_workers else 0)
            )
        else:
            examples = self.examples[start * self.per_host : stop * self.per_host]
            # two batches' images ahead: with one, the workers (which share the cores with the step)
            # had a step's time to make the next batch and the loop still waited ~4% of it (py-spy, DeiT-tiny
            # recipe, batch 32, 2 cores)
            read_ahead = 2 * self.per_host if self.num_workers else 0
            iter_dataset = examples.to_iter_dataset(
                grain.ReadOptions(num_threads=self.num_workers, prefetch_buffer_size=read_ahead)
            ).batch(self.per_host, drop_remainder=True, batch_fn=_assemble)
        # Each batch's bad images are recorded as it is handed out, wherever it was placed.
        iter_dataset = iter_dataset.map(lambda batch: _Placed(batch.skipped, place(batch) if place else batch))
        if place is not None and self.num_workers:  # placed (e.g. copied to the devices) one batch ahead
            iter_dataset = grain.experimental.ThreadPrefetchIterDataset(iter_dataset, prefetch_buffer_size=1)
        iterator = iter(iter_dataset)
        iterator.start_prefetch()  # workers start now, not at the first next()
        return self._handed_out(iterator)

    def _handed_out(self, iterator) -> Iterator[Any]:
        try:
            for element in iterator:
                yield self.bad_images.record_batch(element).placed
        finally:
            iterator.close()  # stops threads and worker processes


@dataclasses.dataclass(frozen=True)
class _Placed:
    """A batch as ``place`` made it (the batch itself without ``place``), with the messages of the
    bad images met building it."""

    skipped: tuple[str, ...]
    placed: Any


class TrainLoader:
    """``loader.batch(step)`` is this host's share of the global batch of ``step``;
    ``loader.iterate(start)`` streams the same batches from ``start`` on.

    ``num_workers`` threads or processes (``worker_kind``) decode and augment; 0 reads in
    the consuming thread. ``transform`` must pickle (cloudpickle: lambdas are fine) when
    ``worker_kind="processes"``. With a ``batch_transform`` (which must give what
    ``transform`` gives, image by image), images are read one by one and augmented a batch
    at a time, and each worker builds whole batches: for small images, where the cost is
    Python's per-image overhead, not pixels (see :meth:`with_batch_transform`).
    """

    def __init__(
        self,
        source: Source,
        transform: Transform,
        global_batch: int,
        *,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        on_bad_image: str = "skip",
        num_workers: int = 2,
        worker_kind: str = "threads",
        batch_transform: BatchTransform | None = None,
    ):
        grain = _grain()
        self._arguments = dict(
            source=source,
            transform=transform,
            global_batch=global_batch,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            worker_kind=worker_kind,
        )
        self.source, self.global_batch, self.seed = source, global_batch, seed
        self.bad_images = BadImageLog(on_bad_image)
        self.slice = _host_slice(global_batch, process_index, process_count)
        per_host = self.slice.stop - self.slice.start
        examples = (
            grain.MapDataset.range(_STREAM_LENGTH // global_batch * per_host)
            .map(_HostPositions(global_batch, self.slice))
            .map(_StreamOrder(len(source), seed))
            .map(_ReadExample(source, None if batch_transform else transform, seed, on_bad_image, replace_bad=True))
        )
        assemble = _AssembleTransformed(batch_transform, seed) if batch_transform else None
        self._loader = _Loader(examples, per_host, self.bad_images, num_workers, worker_kind, assemble)
        if batch_transform:  # read a batch's examples in one call, not one grain element each
            read = _ReadExample(source, None, seed, on_bad_image, replace_bad=True)
            self._loader.batches = grain.MapDataset.range(len(self._loader.batches)).map(
                _ReadBatch(
                    _HostPositions(global_batch, self.slice), _StreamOrder(len(source), seed), read, per_host, assemble
                )
            )

    def with_batch_transform(self, batch_transform: BatchTransform) -> TrainLoader:
        """The same loader (same batches) augmenting a batch at a time with ``batch_transform``."""
        return TrainLoader(**self._arguments, batch_transform=batch_transform)

    @property
    def dataset(self):
        """The ``grain.MapDataset`` whose element ``s`` is this host's batch of step ``s``
        (bad images it meets are not recorded in :attr:`bad_images`)."""
        return self._loader.batches

    def positions(self, step: int) -> np.ndarray:
        return np.arange(step * self.global_batch, (step + 1) * self.global_batch, dtype=np.int64)[self.slice]

    def batch(self, step: int) -> Batch:
        return self._loader.read(step)

    def iterate(self, start_step: int, place: Callable[[Batch], Any] | None = None) -> Iterator[Any]:
        """Batches from ``start_step`` on, read ahead by the workers while a step trains. With ``place``
        (e.g. :meth:`vitjax.training.experiment.Experiment.step_inputs`, which copies a batch to the
        devices), each batch is handed out as ``place(batch)``, computed one batch ahead by a thread of
        its own (with ``num_workers`` > 0), so that copying overlaps the step instead of adding to it."""
        return self._loader.stream(start_step, len(self._loader.batches), place)


class EvalLoader:
    """Every example once, in order; the last batch is padded and masked, and so are bad
    images (they are left out of the metrics, not replaced)."""

    def __init__(
        self,
        source: Source,
        transform: Transform,
        global_batch: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        on_bad_image: str = "skip",
        num_workers: int = 2,
        worker_kind: str = "threads",
    ):
        grain = _grain()
        self.source, self.global_batch = source, global_batch
        self.bad_images = BadImageLog(on_bad_image)
        self.slice = _host_slice(global_batch, process_index, process_count)
        per_host = self.slice.stop - self.slice.start
        examples = (
            grain.MapDataset.range(len(self) * per_host)
            .map(_HostPositions(global_batch, self.slice))
            .map(_EvalOrder(len(source)))
            .map(_ReadExample(source, transform, 0, on_bad_image, replace_bad=False))
        )
        self._loader = _Loader(examples, per_host, self.bad_images, num_workers, worker_kind)

    def __len__(self) -> int:
        return -(-len(self.source) // self.global_batch)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, place: Callable[[Batch], Any] | None = None) -> Iterator[Any]:
        """Every batch once, in order, read ahead by the workers; with ``place``, each is handed out
        as ``place(batch)``, computed one batch ahead as :meth:`TrainLoader.iterate` does."""
        return self._loader.stream(0, len(self), place)
