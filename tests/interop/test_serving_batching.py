"""The dynamic batcher's policy: which images run together, read from the batch sizes it reports.

No test here measures time. Waits that must end are bounded by limits 100 times longer
than the policy allows (a hang fails the test instead of blocking it); waits that must not
end early are checked by what ran, never by how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from testutil import TinyPredictor, metric, png_bytes, serving_in_thread, tiny_model

from interop.serving import ServeConfig, create_app
from interop.serving.batcher import DynamicBatcher
from interop.serving.client import Client
from interop.serving.errors import QueueFull
from interop.serving.metrics import ServerMetrics

LONG_MS = 60_000.0  # a wait no test may reach


def batcher(sizes: list[int], *, max_batch_size: int = 4, max_wait_ms: float = 1.0, decode_wait_ms: float = LONG_MS):
    def run_batch(images: np.ndarray) -> np.ndarray:
        sizes.append(len(images))
        return images.reshape(len(images), -1)[:, :3]

    return DynamicBatcher(
        run_batch,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        decode_wait_ms=decode_wait_ms,
        max_queue_images=16,
        metrics=ServerMetrics(max_batch_size),
    )


def image(value: float) -> np.ndarray:
    return np.full((1, 3, 4, 4), value, np.float32)


def test_a_batch_not_full_waits_for_images_still_being_decoded():
    async def scenario():
        sizes: list[int] = []
        b = batcher(sizes)
        b.start()
        decoding = b.expect(2)  # a request whose two images are being decoded
        first = asyncio.create_task(b.submit(image(1)))
        await asyncio.sleep(0.2)  # 200 times max_wait: alone, the first image would have run by now
        assert sizes == [] and b.queued == 0 and b.incoming == 2
        decoding.done(coming=True)
        rows = await asyncio.wait_for(b.submit(np.concatenate([image(2), image(3)])), 10)
        np.testing.assert_array_equal((await first)[0], [1, 1, 1])
        np.testing.assert_array_equal(rows[:, 0], [2, 3])
        await b.stop()
        return sizes

    assert asyncio.run(scenario()) == [3]


def test_with_nothing_being_decoded_a_batch_waits_only_max_wait():
    async def scenario():
        sizes: list[int] = []
        b = batcher(sizes)  # decode_wait 60 s, max_wait 1 ms
        b.start()
        rows = await asyncio.wait_for(b.submit(image(1)), 10)  # not full, nothing coming: runs after max_wait
        await b.stop()
        return sizes, rows

    sizes, rows = asyncio.run(scenario())
    assert sizes == [1] and rows.shape == (1, 3)


@pytest.mark.parametrize("how", ["decode failed", "queue full"])
def test_images_that_will_not_come_release_the_waiting_batch(how):
    async def scenario():
        sizes: list[int] = []
        b = batcher(sizes)
        b.max_queue_images = 2
        b.start()
        decoding = b.expect(3)
        first = asyncio.create_task(b.submit(image(1)))
        await asyncio.sleep(0.05)
        assert sizes == []
        if how == "decode failed":
            decoding.done(coming=False)
        else:  # 3 images do not fit in a queue of 2
            decoding.done(coming=True)
            with pytest.raises(QueueFull, match="server busy"):
                await b.submit(np.concatenate([image(2), image(3), image(4)]))
        await asyncio.wait_for(first, 10)  # not the 60 s decode_wait
        await b.stop()
        return sizes, b.incoming

    assert asyncio.run(scenario()) == ([1], 0)


def test_the_wait_for_decoding_images_ends_at_decode_wait():
    async def scenario():
        sizes: list[int] = []
        b = batcher(sizes, max_wait_ms=1, decode_wait_ms=20)
        b.start()
        decoding = b.expect(1)  # never comes
        await asyncio.wait_for(b.submit(image(1)), 10)
        decoding.done(coming=False)
        await b.stop()
        return sizes

    assert asyncio.run(scenario()) == [1]


def test_a_full_batch_runs_at_once_though_more_images_are_being_decoded():
    async def scenario():
        sizes: list[int] = []
        b = batcher(sizes, max_batch_size=2)
        b.start()
        decoding = b.expect(5)
        rows = await asyncio.wait_for(b.submit(np.concatenate([image(1), image(2)])), 10)
        decoding.done(coming=False)
        await b.stop()
        return sizes, rows

    sizes, rows = asyncio.run(scenario())
    assert sizes == [2] and rows.shape == (2, 3)


class _GatedPredictor(TinyPredictor):
    """Holds its first batch after ``armed`` until ``release`` is set, so that requests pile up meanwhile."""

    def __init__(self):
        self.armed, self.release, self.held = threading.Event(), threading.Event(), threading.Event()

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.armed.is_set() and not self.held.is_set():
            self.held.set()
            assert self.release.wait(30), "the test never released the first batch"
        return super().predict(images)


def batch_counts(url: str, max_batch_size: int) -> dict[int, int]:
    """Batches run so far by size, from the server's /metrics histogram."""
    counts, below = {}, 0.0
    for size in range(1, max_batch_size + 1):
        cumulative = metric(url, "vitjax_serve_batch_size_bucket", f'le="{float(size)}"')
        if cumulative > below:
            counts[size] = int(cumulative - below)
        below = cumulative
    return counts


def test_concurrent_clients_are_batched_together_through_the_server():
    """8 clients: one request runs alone and is held; the 7 sent meanwhile run as one batch, all answered."""
    model = tiny_model()
    gated = _GatedPredictor()
    model.predictor = gated
    config = ServeConfig(max_batch_size=8, max_wait_ms=1)
    with serving_in_thread(create_app(model, config)) as url, ThreadPoolExecutor(8) as pool:
        gated.armed.set()
        data = png_bytes()
        first = pool.submit(lambda: Client(url, timeout=30).classify([data]))
        assert gated.held.wait(30), "the first request never reached the model"
        rest = [pool.submit(lambda: Client(url, timeout=30).classify([data])) for _ in range(7)]
        deadline = time.monotonic() + 30
        while metric(url, "vitjax_serve_queue_depth") < 7:
            assert time.monotonic() < deadline, "the 7 requests never queued"
            time.sleep(0.02)
        gated.release.set()
        answers = [first.result(30), *(f.result(30) for f in rest)]
        assert [a.status for a in answers] == [200] * 8
        assert batch_counts(url, 8) == {1: 1, 7: 1}
