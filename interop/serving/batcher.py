"""Dynamic batching: images from concurrent requests run as one batch, off the event loop.

Each image is one queue item with its own future. A worker task takes the first
waiting item, then gathers more until the batch holds ``max_batch_size`` images or the
first has waited ``max_wait_ms``; the batch runs on a single inference thread (the
engines parallelise internally) while the event loop keeps serving. Items whose
request has given up (timeout, client gone) are dropped before they run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from interop.serving.errors import InferenceFailed, QueueFull
from interop.serving.metrics import ServerMetrics

log = logging.getLogger("interop.serving")


@dataclasses.dataclass
class _Item:
    image: np.ndarray  # CHW float32
    future: asyncio.Future
    enqueued: float = 0.0  # perf_counter() when queued, when its batch started and ended
    started: float = 0.0
    finished: float = 0.0


class DynamicBatcher:
    """``await submit(images)`` -> the model's rows for those images, batched with other requests'."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_images: int,
        metrics: ServerMetrics,
    ):
        self._run_batch = run_batch
        self.max_batch_size, self.max_wait_s, self.max_queue_images = (
            max_batch_size,
            max_wait_ms / 1e3,
            max_queue_images,
        )
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Starts the worker task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stops the worker; waiting requests fail. Call after in-flight requests have finished."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(
                    InferenceFailed("server stopped before this image ran", status=503, kind="shutting_down")
                )
        self._executor.shutdown(wait=True)

    def run_now(self, images: np.ndarray) -> np.ndarray:
        """Runs a batch synchronously on the inference thread (warm-up, before serving)."""
        return self._executor.submit(self._run_batch, images).result()

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queues ``images`` (NCHW) and waits for their rows; raises :class:`QueueFull` when the queue is full."""
        rows, _, _ = await self.submit_timed(images)
        return rows

    async def submit_timed(self, images: np.ndarray) -> tuple[np.ndarray, float, float]:
        """As :meth:`submit`, with the images' mean seconds in the queue and in the model."""
        assert self._queue is not None, "DynamicBatcher.start() was not called"
        if self._queue.qsize() + len(images) > self.max_queue_images:
            raise QueueFull(
                f"server busy: {self._queue.qsize()} images queued (limit {self.max_queue_images}); retry later"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(image, loop.create_future(), now) for image in images]
        for item in items:
            self._queue.put_nowait(item)
        self._metrics.queue_depth.set(self._queue.qsize())
        try:
            rows = np.stack(await asyncio.gather(*(item.future for item in items)))
            queue_s = sum(item.started - item.enqueued for item in items) / max(len(items), 1)
            compute_s = sum(item.finished - item.started for item in items) / max(len(items), 1)
            return rows, queue_s, compute_s
        finally:
            for item in items:  # on timeout/cancellation, the worker skips these
                if not item.future.done():
                    item.future.cancel()

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._metrics.queue_depth.set(self._queue.qsize())
            if not batch:
                continue
            images = np.stack([item.image for item in batch])
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, images)
            except Exception as e:  # an engine failure fails this batch's requests, not the server
                log.exception("inference failed on a batch of %d", len(batch))
                error = InferenceFailed(f"inference failed ({type(e).__name__})")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            end = time.perf_counter()
            self._metrics.observe_batch(len(batch), end - start)
            for item in batch:
                item.started, item.finished = start, end
            for item, row in zip(batch, outputs):
                if not item.future.done():
                    item.future.set_result(row)
