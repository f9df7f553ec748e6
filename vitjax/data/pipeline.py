"""Deterministic, host-sharded batching over a random-access source.

Training reads an endless stream: epoch ``e`` visits the examples in the order of a
permutation seeded by ``(seed, e)``, and the example at stream position ``p`` is
augmented with a generator seeded by ``(seed, p)``. The global batch of step ``s`` is
stream positions ``[s * B, (s + 1) * B)``; host ``h`` of ``H`` reads only its
contiguous ``B / H`` slice. So a batch is a pure function of the step: a resumed run,
or the same run on another number of hosts, sees exactly the same data.

A corrupt or unreadable image is either fatal (``on_bad_image="fail"``: the error
names the file) or skipped (``"skip"``): it is logged with its path, counted, and
replaced by the next readable example, deterministically.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Callable, Iterator

import numpy as np

from vitjax.data.sources import DataError, Source
from vitjax.data.transforms import ImageError

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass
class Batch:
    images: np.ndarray  # [local_batch, H, W, C] float32
    labels: np.ndarray  # [local_batch] int32
    mask: np.ndarray  # [local_batch] bool; False for eval padding


class BadImageLog:
    def __init__(self, policy: str):
        if policy not in ("skip", "fail"):
            raise DataError(f"data.on_bad_image must be 'skip' or 'fail', not {policy!r}")
        self.policy = policy
        self.skipped: list[str] = []

    def record(self, error: ImageError) -> None:
        if self.policy == "fail":
            raise error
        self.skipped.append(str(error))
        logging.warning("skipped a bad image (%d so far): %s", len(self.skipped), error)


class _Reader:
    def __init__(self, source: Source, transform: Transform, seed: int, bad_images: BadImageLog, num_workers: int,
                 replace_bad: bool = True):
        self.source, self.transform, self.seed, self.bad = source, transform, seed, bad_images
        self.replace_bad = replace_bad
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))

    def example(self, index: int, position: int) -> tuple[np.ndarray, int] | None:
        """The transformed example at ``index``. A bad image is replaced by the next good
        one in training, and dropped (``None``, masked out) in evaluation."""
        n = len(self.source)
        for attempt in range(min(n, 100) if self.replace_bad else 1):
            candidate = (index + attempt) % n
            try:
                image, label = self.source.load(candidate)
            except ImageError as e:
                self.bad.record(e)
                continue
            rng = np.random.default_rng([self.seed, position])
            return self.transform(image, rng), label
        if not self.replace_bad:
            return None
        raise DataError(f"no readable image among 100 examples from {self.source.describe(index)}")

    def batch(self, indices: np.ndarray, positions: np.ndarray, valid: np.ndarray) -> Batch:
        examples = list(self.pool.map(self.example, indices.tolist(), positions.tolist()))
        good = next((e for e in examples if e is not None), None)
        if good is None:
            raise DataError(f"no readable image in a batch from {self.source.describe(int(indices[0]))}")
        valid = valid & np.asarray([e is not None for e in examples])
        examples = [e if e is not None else (np.zeros_like(good[0]), 0) for e in examples]
        images = np.stack([e[0] for e in examples])
        labels = np.asarray([e[1] for e in examples], np.int32)
        return Batch(images, labels, valid)


def _host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise DataError(f"batch size {global_batch} is not divisible by the {process_count} processes")
    per_host = global_batch // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


class TrainLoader:
    """``loader.batch(step)`` is this host's share of the global batch of ``step``."""

    def __init__(self, source: Source, transform: Transform, global_batch: int, *, seed: int,
                 process_index: int = 0, process_count: int = 1, on_bad_image: str = "skip", num_workers: int = 2):
        self.source, self.global_batch = source, global_batch
        self.seed = seed
        self.bad_images = BadImageLog(on_bad_image)
        self.slice = _host_slice(global_batch, process_index, process_count)
        self._reader = _Reader(source, transform, seed, self.bad_images, num_workers)
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(len(self.source))}
        return self._permutations[epoch]

    def positions(self, step: int) -> np.ndarray:
        return np.arange(step * self.global_batch, (step + 1) * self.global_batch, dtype=np.int64)[self.slice]

    def batch(self, step: int) -> Batch:
        n = len(self.source)
        positions = self.positions(step)
        indices = np.asarray([self._permutation(int(p // n))[p % n] for p in positions])
        return self._reader.batch(indices, positions, np.ones(len(positions), bool))

    def iterate(self, start_step: int) -> Iterator[Batch]:
        """Batches from ``start_step`` on, the next one prepared while the current one trains."""
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pending = pool.submit(self.batch, start_step)
        step = start_step
        try:
            while True:
                batch = pending.result()
                step += 1
                pending = pool.submit(self.batch, step)
                yield batch
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


class EvalLoader:
    """Every example once, in order; the last batch is padded and masked."""

    def __init__(self, source: Source, transform: Transform, global_batch: int, *, process_index: int = 0,
                 process_count: int = 1, on_bad_image: str = "skip", num_workers: int = 2):
        self.source, self.global_batch = source, global_batch
        self.bad_images = BadImageLog(on_bad_image)
        self.slice = _host_slice(global_batch, process_index, process_count)
        self._reader = _Reader(source, transform, 0, self.bad_images, num_workers, replace_bad=False)

    def __len__(self) -> int:
        return -(-len(self.source) // self.global_batch)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.source)
        for step in range(len(self)):
            positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)[self.slice]
            valid = positions < n
            yield self._reader.batch(np.where(valid, positions, 0), positions, valid)
