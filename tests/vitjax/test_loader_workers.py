"""The grain input pipeline's workers: threads and processes stream exactly the batches that
``loader.batch(step)`` computes, from any resumed step, with the same bad-image policy."""

import threading

import jax
import numpy as np
import pytest
from PIL import Image

import vitjax
from vitjax.data.pipeline import Batch, EvalLoader, TrainLoader
from vitjax.data.sources import DataError, FileListSource
from vitjax.data.transforms import ImageError, preprocess_eval


def noisy_eval_transform(image, rng):
    """The eval transform plus noise from the example's generator (as augmentation draws)."""
    clean = preprocess_eval(image, vitjax.get_spec("DeiT_test_patch8_32").eval_transform)
    return clean + rng.standard_normal(clean.shape).astype(np.float32)


def file_list_with_bad_images(root, count=10):
    """``count`` JPEGs listed in ``list.txt``, of which ``img_3.jpg`` is corrupt and
    ``gone.jpg`` is missing."""
    rng = np.random.RandomState(0)
    lines = []
    for i in range(count):
        path = root / "images" / f"img_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (30, 40, 3), np.uint8)).save(path)
        lines.append(f"images/img_{i}.jpg {i % 3}")
    (root / "images" / "img_3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "list.txt").write_text("\n".join(lines + ["images/gone.jpg 0"]) + "\n")
    return FileListSource(root, "list.txt")


def place_noting_thread(batch):
    """A ``place`` for ``iterate``: the batch on the default device, with the thread that placed it."""
    return threading.current_thread(), jax.device_put((batch.images, batch.labels, batch.mask))


def placed_back(placed):
    """The host batches of what :func:`place_noting_thread` placed."""
    return [Batch(*(np.asarray(a) for a in arrays)) for _, arrays in placed]


def assert_same_batches(streamed, computed):
    assert len(streamed) == len(computed)
    for s, c in zip(streamed, computed, strict=True):
        np.testing.assert_array_equal(s.images, c.images)
        np.testing.assert_array_equal(s.labels, c.labels)
        np.testing.assert_array_equal(s.mask, c.mask)


@pytest.mark.parametrize("worker_kind,num_workers", [("threads", 0), ("threads", 3), ("processes", 2)])
def test_streamed_batches_equal_the_batches_of_their_steps_and_skips_are_counted_alike(
    tmp_path, worker_kind, num_workers
):
    source = file_list_with_bad_images(tmp_path)  # 11 entries, 2 unreadable
    streaming = TrainLoader(source, noisy_eval_transform, 4, seed=5, num_workers=num_workers, worker_kind=worker_kind)
    batches = streaming.iterate(2)  # a run resumed at step 2
    streamed = [next(batches) for _ in range(5)]
    batches.close()
    computing = TrainLoader(source, noisy_eval_transform, 4, seed=5, num_workers=0)
    assert_same_batches(streamed, [computing.batch(step) for step in range(2, 7)])
    # Steps 2-6 read stream positions 8-27: each epoch of 11 lists the two bad entries once.
    assert len(streaming.bad_images.skipped) == len(computing.bad_images.skipped) >= 2
    assert {s.split(": ")[0].rsplit("/", 1)[-1] for s in streaming.bad_images.skipped} == {"img_3.jpg", "gone.jpg"}


@pytest.mark.parametrize("worker_kind,num_workers", [("threads", 0), ("threads", 2), ("processes", 2)])
def test_placed_batches_are_the_batches_of_their_steps_placed_ahead_by_a_thread_of_their_own(
    tmp_path, worker_kind, num_workers
):
    """``iterate(start, place=...)`` (what the training loop does with ``Experiment.step_inputs``)
    hands out ``place(batch)`` for the same batches, placed outside the consuming thread when
    there are workers, so that copying to the devices overlaps the step; closing stops that thread."""
    source = file_list_with_bad_images(tmp_path)
    streaming = TrainLoader(source, noisy_eval_transform, 4, seed=5, num_workers=num_workers, worker_kind=worker_kind)

    batches = streaming.iterate(2, place=place_noting_thread)
    placed = [next(batches) for _ in range(5)]
    assert all(isinstance(a, jax.Array) for _, arrays in placed for a in arrays)
    placing_threads = {thread for thread, _ in placed}
    assert (placing_threads == {threading.current_thread()}) == (num_workers == 0)
    batches.close()
    assert not any(thread.is_alive() for thread in placing_threads - {threading.current_thread()})
    computing = TrainLoader(source, noisy_eval_transform, 4, seed=5, num_workers=0)
    assert_same_batches(placed_back(placed), [computing.batch(step) for step in range(2, 7)])
    assert len(streaming.bad_images.skipped) == len(computing.bad_images.skipped) >= 2


@pytest.mark.parametrize("worker_kind", ["threads", "processes"])
@pytest.mark.parametrize("placed", [False, True])
def test_a_bad_image_stops_the_stream_naming_the_file_when_configured(tmp_path, worker_kind, placed):
    source = file_list_with_bad_images(tmp_path)
    loader = TrainLoader(
        source, noisy_eval_transform, 11, seed=0, num_workers=2, worker_kind=worker_kind, on_bad_image="fail"
    )
    with pytest.raises(ImageError, match=r"(img_3.jpg: cannot decode image|gone.jpg: no such file)"):
        next(loader.iterate(0, place=jax.device_put if placed else None))


def test_evaluation_streams_every_example_once_with_padding_and_bad_images_masked(tmp_path):
    source = file_list_with_bad_images(tmp_path)
    batches = list(EvalLoader(source, noisy_eval_transform, 4, num_workers=2))
    assert len(batches) == 3 and [b.mask.sum() for b in batches] == [3, 4, 2]  # img_3, gone.jpg, one pad
    labels = np.concatenate([b.labels[b.mask] for b in batches])
    np.testing.assert_array_equal(labels, [0, 1, 2, 1, 2, 0, 1, 2, 0])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_evaluation_batches_are_placed_ahead_like_training_batches(tmp_path, num_workers):
    """``EvalLoader.iterate(place=...)`` (what ``eval_metrics`` does with ``Experiment.global_batch``)
    hands out ``place(batch)`` for every batch of the plain iteration, padding and masks included,
    placed outside the consuming thread when there are workers."""
    source = file_list_with_bad_images(tmp_path)
    plain = list(EvalLoader(source, noisy_eval_transform, 4, num_workers=0))

    loader = EvalLoader(source, noisy_eval_transform, 4, num_workers=num_workers)
    placed = list(loader.iterate(place=place_noting_thread))
    assert (({thread for thread, _ in placed}) == {threading.current_thread()}) == (num_workers == 0)
    assert_same_batches(placed_back(placed), plain)
    assert len(loader.bad_images.skipped) == 2


def test_worker_options_are_checked(tmp_path):
    source = file_list_with_bad_images(tmp_path)
    with pytest.raises(DataError, match="data.worker_kind must be one of threads, processes, not 'fibers'"):
        TrainLoader(source, noisy_eval_transform, 1, seed=0, worker_kind="fibers")
    with pytest.raises(DataError, match="data.num_workers must be >= 0, not -1"):
        TrainLoader(source, noisy_eval_transform, 1, seed=0, num_workers=-1)


def test_training_with_process_workers_takes_the_same_steps_as_with_threads(tmp_path):
    from test_train import assert_params_close, final_params, tiny_config

    from vitjax.training import train

    for kind in ("threads", "processes"):
        train.train_and_evaluate(
            tiny_config(num_steps=3, **{"data.worker_kind": kind, "data.num_workers": 2}), tmp_path / kind
        )
    assert_params_close(final_params(tmp_path / "threads"), final_params(tmp_path / "processes"), atol=0.0)
