"""Dynamic batching: images from concurrent requests run as one batch, off the event loop.

Each image is one queue item with its own future. A worker task takes the first
waiting item, then gathers more until the batch holds ``max_batch_size`` images or the
first has waited ``max_wait_ms``. Images are decoded before they are queued, on other
threads, and decoding takes longer than a few milliseconds: a batch that is not full
when ``max_wait_ms`` is up therefore goes on waiting, up to ``decode_wait_ms`` more, for
images that requests have already brought in and that are being decoded now (the
server announces them with :meth:`DynamicBatcher.expect`). With nothing being decoded a
batch never waits past ``max_wait_ms``. Under load this lets the clients just answered
rejoin the next batch instead of the batches splitting in two (2 and 6, or 3 and 5, images
in turn under 8 clients: 5 ms of waiting against 15 ms or more of decoding; see
docs/serving.md).

The batch runs on a single inference thread (the engines parallelise internally) while
the event loop keeps serving. Items whose request has given up (timeout, client gone)
are dropped before they run.
"""

from __future__ import annotations

import asyncio
import collections
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


class Expected:
    """Images a request is decoding, counted by the batcher until they are queued or given up (:meth:`done`)."""

    def __init__(self, batcher: DynamicBatcher, count: int):
        self._batcher, self._count = batcher, count
        batcher._incoming += count

    def done(self, coming: bool) -> None:
        """The images are decoded and about to be submitted (``coming``), or will never be (a decode failed,
        the request was cancelled). Idempotent."""
        if self._count:
            self._batcher._incoming -= self._count
            self._count = 0
            if not coming and self._batcher._changed is not None:  # a batch waiting for them need not wait longer
                self._batcher._changed.set()


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
        decode_wait_ms: float = 0.0,
    ):
        self._run_batch = run_batch
        self.max_batch_size, self.max_wait_s, self.max_queue_images = (
            max_batch_size,
            max_wait_ms / 1e3,
            max_queue_images,
        )
        self.decode_wait_s = decode_wait_ms / 1e3
        self._metrics = metrics
        self._queue: collections.deque[_Item] = collections.deque()
        self._changed: asyncio.Event | None = None  # set when an item is queued or expected images will not come
        self._incoming = 0  # images being decoded for requests, not queued yet
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def incoming(self) -> int:
        """Images announced by :meth:`expect` and not yet queued or given up."""
        return self._incoming

    def start(self) -> None:
        """Starts the worker task on the running event loop."""
        self._changed = asyncio.Event()
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
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(
                    InferenceFailed("server stopped before this image ran", status=503, kind="shutting_down")
                )
        self._executor.shutdown(wait=True)

    def run_now(self, images: np.ndarray) -> np.ndarray:
        """Runs a batch synchronously on the inference thread (warm-up, before serving)."""
        return self._executor.submit(self._run_batch, images).result()

    def expect(self, count: int) -> Expected:
        """Announces ``count`` images being decoded for :meth:`submit`; call ``done()`` on the result when they are."""
        return Expected(self, count)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queues ``images`` (NCHW) and waits for their rows; raises :class:`QueueFull` when the queue is full."""
        rows, _, _ = await self.submit_timed(images)
        return rows

    async def submit_timed(self, images: np.ndarray) -> tuple[np.ndarray, float, float]:
        """As :meth:`submit`, with the images' mean seconds in the queue and in the model."""
        assert self._changed is not None, "DynamicBatcher.start() was not called"
        if len(self._queue) + len(images) > self.max_queue_images:
            self._changed.set()  # these images will not come: a batch waiting for them need not wait
            raise QueueFull(
                f"server busy: {len(self._queue)} images queued (limit {self.max_queue_images}); retry later"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(image, loop.create_future(), now) for image in images]
        self._queue.extend(items)
        self._changed.set()
        self._metrics.queue_depth.set(len(self._queue))
        try:
            rows = np.stack(await asyncio.gather(*(item.future for item in items)))
            queue_s = sum(item.started - item.enqueued for item in items) / max(len(items), 1)
            compute_s = sum(item.finished - item.started for item in items) / max(len(items), 1)
            return rows, queue_s, compute_s
        finally:
            for item in items:  # on timeout/cancellation, the worker skips these
                if not item.future.done():
                    item.future.cancel()

    async def _wait_for_change(self, timeout: float | None) -> None:
        assert self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _collect(self) -> list[_Item]:
        """The next batch: full, or when its first image has waited ``max_wait_ms`` (see the module docstring)."""
        while not self._queue:
            await self._wait_for_change(None)
        batch = [self._queue.popleft()]
        began = time.monotonic()
        deadline, decode_deadline = began + self.max_wait_s, began + self.max_wait_s + self.decode_wait_s
        while True:
            while self._queue and len(batch) < self.max_batch_size:
                batch.append(self._queue.popleft())
            if len(batch) >= self.max_batch_size:
                break
            now = time.monotonic()
            until = decode_deadline if self._incoming > 0 else deadline
            if now >= until:
                break
            await self._wait_for_change(until - now)
        return [item for item in batch if not item.future.done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._metrics.queue_depth.set(len(self._queue))
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
