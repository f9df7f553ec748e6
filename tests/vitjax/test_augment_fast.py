"""The cheaper implementations of the training pipeline's steps give the old values exactly."""

import numpy as np
import pytest
from testutil import InMemoryImages

from vitjax.data import transforms
from vitjax.data.transforms import normalize

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def formula(image, mean, std):
    """``normalize`` as it was: float32 arithmetic on every pixel."""
    scale = np.float32(1.0 / 255.0)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (image.astype(np.float32) * scale - mean) / std


@pytest.mark.parametrize("opencv", [True, False])
@pytest.mark.parametrize(
    "shape, mean, std",
    [
        ((224, 224, 3), *IMAGENET),
        ((4, 31, 17, 3), *IMAGENET),  # a batch
        ((9, 5, 3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TNT's
        ((9, 5, 3), 0.5, 0.25),  # scalars
        ((9, 5, 1), (0.5,), (0.25,)),
        ((9, 5, 4), (0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)),
        ((2, 3, 9, 5, 3), *IMAGENET),
        ((7, 3), *IMAGENET),
    ],
)
def test_normalize_looks_up_the_formulas_values_bit_for_bit(shape, mean, std, opencv, monkeypatch):
    if opencv:
        pytest.importorskip("cv2")
    else:
        monkeypatch.setattr(transforms, "_opencv", lambda: None)
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image.reshape(-1)[: min(image.size, 256)] = np.arange(min(image.size, 256))  # every level where it fits
    out = normalize(image, mean, std)
    expected = formula(image, mean, std)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))  # the same bits, not just close


def test_normalize_of_a_flipped_view_and_of_floats_is_the_formulas():
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    flipped = image[:, ::-1]
    assert np.array_equal(normalize(flipped, *IMAGENET), formula(flipped, *IMAGENET))
    floats = image.astype(np.float32)
    assert np.array_equal(normalize(floats, *IMAGENET), formula(floats, *IMAGENET))
    table = transforms.normalize_table(*IMAGENET, 3)
    assert not table.flags.writeable  # shared by every call: nobody may change it


# --- uint8 to the device: the host draws the erasing rectangle, the device fills it ---


def deit_augment(**overrides):
    from ml_collections import ConfigDict

    settings = dict(
        random_resized_crop=True,
        crop_scale=(0.08, 1.0),
        interpolation="bicubic",
        hflip=True,
        randaugment="rand-m9-mstd0.5-inc1",
        random_erasing=0.25,
    )
    return ConfigDict({**settings, **overrides})


def photo(seed: int, shape=(75, 100, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = np.stack([x * 2, y * 3, x + y], -1)[..., : shape[2]]
    return (smooth + rng.integers(0, 60, shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("erasing", [0.25, 1.0, 0.0])
def test_uint8_output_normalised_and_erased_on_the_device_is_the_float_output_exactly(erasing):
    jnp = pytest.importorskip("jax.numpy")
    from vitjax.data.augment import ErasedImage, erase_noise, fill_erased, train_transform
    from vitjax.data.transforms import normalize_table

    settings = dict(size=48, mean=IMAGENET[0], std=IMAGENET[1], augment=deit_augment(random_erasing=erasing))
    floats, erased = [], []
    for seed in range(40):
        image = photo(seed)
        floats.append(train_transform(image, np.random.default_rng([7, seed]), **settings))
        out = train_transform(image, np.random.default_rng([7, seed]), normalize_image=False, **settings)
        if not erasing:  # nothing to erase: the uint8 pixels alone
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8
            out = ErasedImage(out, np.zeros(4, np.int32), np.zeros(0, np.float32))
        assert isinstance(out, ErasedImage) and out.image.dtype == np.uint8 and out.erase.dtype == np.int32
        top, left, h, w = (int(v) for v in out.erase)
        assert out.noise.dtype == np.float32 and out.noise.shape == (h * w * 3,)
        if h:
            assert 0 < h < 48 and 0 < w < 48 and top + h <= 48 and left + w <= 48
        erased.append(out)
    count = sum(int(e.erase[2] > 0) for e in erased)
    assert count == 0 if erasing == 0 else count >= (40 if erasing == 1 else 3)
    images = np.stack([e.image for e in erased])
    noise = erase_noise(erased)
    expected = np.stack(floats)
    # Normalised on the device by looking the host's table up (jax), or on the host: bit for bit.
    table = jnp.asarray(normalize_table(*IMAGENET, 3))
    on_device = fill_erased(table[jnp.asarray(images), jnp.arange(3)], np.stack([e.erase for e in erased]), noise)
    assert np.array_equal(np.asarray(on_device).view(np.uint32), expected.view(np.uint32))
    host = fill_erased(normalize(images, *IMAGENET), np.stack([e.erase for e in erased]), noise)
    assert np.array_equal(np.asarray(host).view(np.uint32), expected.view(np.uint32))


def test_random_erasing_draws_its_rectangle_with_erase_box_and_the_noise_fits_its_bound():
    from vitjax.data.augment import erase_box, max_erase_pixels, random_erasing

    for seed in range(200):
        image = np.zeros((32, 24, 3), np.float32)
        out = random_erasing(image, np.random.default_rng(seed), 0.5)
        box = erase_box(32, 24, np.random.default_rng(seed), 0.5)
        if box is None:
            assert out is image
            continue
        top, left, h, w = box
        changed = np.argwhere(np.any(out != 0, -1))
        assert changed.min(0).tolist() == [top, left] and changed.max(0).tolist() == [top + h - 1, left + w - 1]
    for height, width in [(224, 224), (32, 24), (7, 300), (384, 384), (5, 5)]:
        bound = max_erase_pixels(height, width)
        rng = np.random.default_rng(height * width)
        boxes = [erase_box(height, width, rng, 1.0) for _ in range(3000)]
        assert max(b[2] * b[3] for b in boxes if b) <= bound < height * width


def test_fill_erased_writes_each_rectangle_from_its_noise_row_major_and_nothing_else():
    pytest.importorskip("jax")
    from vitjax.data.augment import fill_erased

    images = np.full((4, 40, 30, 3), 7.0, np.float32)
    erase = np.array([[0, 0, 0, 0], [5, 3, 20, 10], [0, 0, 39, 29], [39, 29, 1, 1]], np.int32)
    noise = np.random.default_rng(0).standard_normal((4, 39 * 29 * 3 + 6)).astype(np.float32)
    out = np.asarray(fill_erased(images, erase, noise))
    assert out.dtype == np.float32 and out.shape == images.shape
    for i, (top, left, h, w) in enumerate(erase.tolist()):
        expected = images[i].copy()
        expected[top : top + h, left : left + w] = noise[i, : h * w * 3].reshape(h, w, 3)
        np.testing.assert_array_equal(out[i], expected)


def photos(count: int = 24) -> InMemoryImages:
    """An in-memory source of photo-like images of a few sizes."""
    return InMemoryImages([photo(i, ((60, 80, 3), (80, 60, 3), (70, 70, 3))[i % 3]) for i in range(count)], "photos")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_uint8_loader_gives_the_float_loaders_batches_once_normalised_and_erased(num_workers):
    pytest.importorskip("jax")
    from vitjax.data.augment import fill_erased, train_transform
    from vitjax.data.pipeline import TrainLoader

    source = photos()
    settings = dict(size=32, mean=IMAGENET[0], std=IMAGENET[1], augment=deit_augment(random_erasing=0.5))
    floats = TrainLoader(source, lambda im, rng: train_transform(im, rng, **settings), 8, seed=5, num_workers=0)
    uint8 = TrainLoader(
        source,
        lambda im, rng: train_transform(im, rng, normalize_image=False, **settings),
        8,
        seed=5,
        num_workers=num_workers,
    )
    stream, erased = uint8.iterate(2), 0  # a resumed run
    for step in range(2, 7):
        got, expected = next(stream), floats.batch(step)
        assert got.images.dtype == np.uint8 and got.erase.shape == (8, 4) and expected.erase is None
        assert got.erase_noise.dtype == np.float32 and got.erase_noise.shape[0] == 8
        np.testing.assert_array_equal(got.labels, expected.labels)
        np.testing.assert_array_equal(got.erase_noise, uint8.batch(step).erase_noise)  # the same again, read directly
        filled = np.asarray(fill_erased(normalize(got.images, *IMAGENET), got.erase, got.erase_noise))
        np.testing.assert_array_equal(filled, expected.images)
        erased += int(np.sum(got.erase[:, 2] > 0))
    stream.close()
    assert erased > 5
