"""Input pipelines: file lists, tfds, sharding, bad images."""

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image
from testutil import InMemoryImages

import vitjax
from vitjax.data.augment import (
    RAND_AUGMENT_OPS,
    _uniform,
    crop_box,
    parse_randaugment,
    rand_augment,
    resize_boxes,
    train_transform,
    train_transform_batch,
)
from vitjax.data.pipeline import EvalLoader, TrainLoader
from vitjax.data.sources import (
    DataError,
    DigitsSource,
    FileListSource,
    ImageFolderSource,
    TfdsSource,
    encoded,
    make_source,
)
from vitjax.data.transforms import ImageError, preprocess_eval
from vitjax.training import train
from vitjax.training.config import base_config

PHOTOS = {
    "astronaut": skimage.data.astronaut(),
    "chelsea": skimage.data.chelsea(),
    "coffee": skimage.data.coffee(),
    "rocket": skimage.data.rocket(),
}


def write_images(root, count=12, size=(40, 30), classes=3):
    rng = np.random.RandomState(0)
    lines = []
    for i in range(count):
        path = root / "images" / f"img_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
        lines.append(f"images/img_{i}.jpg {i % classes}")
    return lines


def test_file_list_source_reads_paddleclas_lists(tmp_path):
    lines = write_images(tmp_path)
    (tmp_path / "train_list.txt").write_text("\n".join(lines) + "\n")
    source = FileListSource(tmp_path, "train_list.txt")
    assert len(source) == 12 and source.num_classes == 3
    image, label = source.load(4)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8 and label == 1


def test_file_list_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match="missing.txt: file list not found"):
        FileListSource(tmp_path, "missing.txt")
    (tmp_path / "bad.txt").write_text("a.jpg 0\nb.jpg\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'path label'"):
        FileListSource(tmp_path, "bad.txt")
    (tmp_path / "bad2.txt").write_text("a.jpg cat\n")
    with pytest.raises(DataError, match=r"bad2.txt:1: label 'cat' is not an integer"):
        FileListSource(tmp_path, "bad2.txt")


def corrupt_list(tmp_path):
    lines = write_images(tmp_path, count=8)
    (tmp_path / "images" / "img_3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "list.txt").write_text("\n".join(lines + ["images/gone.jpg 0"]) + "\n")
    return FileListSource(tmp_path, "list.txt")


def eval_transform(image, rng):
    return preprocess_eval(image, vitjax.get_spec("DeiT_test_patch8_32").eval_transform)


def test_bad_images_are_skipped_counted_and_logged_with_their_path(tmp_path, caplog):
    source = corrupt_list(tmp_path)
    loader = TrainLoader(source, eval_transform, 9, seed=0, on_bad_image="skip")
    batch = loader.batch(0)  # one epoch: all 9 entries, 2 of them unreadable
    assert batch.images.shape == (9, 32, 32, 3) and np.isfinite(batch.images).all()
    assert len(loader.bad_images.skipped) == 2
    assert any("img_3.jpg: cannot decode image" in s for s in loader.bad_images.skipped)
    assert any("gone.jpg: no such file" in s for s in loader.bad_images.skipped)
    assert "img_3.jpg" in caplog.text

    evaluation = EvalLoader(source, eval_transform, 9, on_bad_image="skip")
    (batch,) = list(evaluation)
    assert batch.mask.sum() == 7  # bad images are left out of the metrics, not replaced


def test_bad_images_fail_loudly_when_configured(tmp_path):
    loader = TrainLoader(corrupt_list(tmp_path), eval_transform, 9, seed=0, on_bad_image="fail")
    with pytest.raises(ImageError, match=r"(img_3.jpg: cannot decode image|gone.jpg: no such file)"):
        loader.batch(0)


def test_batches_are_a_pure_function_of_the_step_and_hosts_read_disjoint_slices():
    source = DigitsSource("train")

    def noisy(image, rng):  # depends on the example's generator, like any augmentation
        return eval_transform(image, rng) + rng.standard_normal((32, 32, 3)).astype(np.float32)

    def loader(index=0, count=1):
        return TrainLoader(source, noisy, 16, seed=3, process_index=index, process_count=count)

    whole = loader().batch(100)
    again = loader().batch(100)
    np.testing.assert_array_equal(whole.images, again.images)
    halves = [loader(i, 2).batch(100) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h.labels for h in halves]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([h.images for h in halves]), whole.images)
    assert not np.array_equal(loader().batch(101).labels, whole.labels)
    # Every example appears once per epoch.
    epoch = np.concatenate([loader().batch(s).labels for s in range(len(source) // 16)])
    assert np.bincount(epoch).sum() == (len(source) // 16) * 16


def test_train_augmentation_is_deterministic_per_seed_and_stays_normalized():
    from ml_collections import ConfigDict

    augment = ConfigDict(
        dict(
            random_resized_crop=True,
            crop_scale=(0.08, 1.0),
            interpolation="bicubic",
            hflip=True,
            randaugment="rand-m9-mstd0.5-inc1",
            random_erasing=0.25,
        )
    )
    image = PHOTOS["chelsea"]
    make = lambda seed: train_transform(
        image, np.random.default_rng(seed), size=64, mean=(0.5,) * 3, std=(0.5,) * 3, augment=augment
    )  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64, 3) and not np.array_equal(a, c)
    assert parse_randaugment("rand-m9-mstd0.5-inc1") == {
        "magnitude": 9.0,
        "magnitude_std": 0.5,
        "num_ops": 2,
        "prob": 0.5,
    }
    with pytest.raises(ValueError, match="unknown RandAugment option"):
        parse_randaugment("rand-m9-x3")
    out = rand_augment(Image.fromarray(image), np.random.default_rng(0), magnitude=9, num_ops=4, prob=1.0)
    assert out.size == (image.shape[1], image.shape[0]) and not np.array_equal(np.asarray(out), image)


@pytest.fixture(params=["native", "numpy"])
def batched_resize(request, monkeypatch):
    """Both ways to the batched resize: one native call (where the library builds) and numpy's
    batched matrix products (where it does not)."""
    from vitjax.kernels import resample

    if request.param == "numpy":
        monkeypatch.setattr(resample, "resize_batch", lambda *args: None)
    elif resample.native_reason() is not None:
        pytest.skip(resample.native_reason())
    return request.param


@pytest.mark.parametrize(
    "box,size",
    [((0, 0, 451, 300), 64), ((10, 20, 200, 250), 224), ((3, 7, 400, 290), 500), ((0, 0, 451, 300), 451)],
)
def test_batched_resize_gives_pillows_bicubic_pixels_exactly(box, size, batched_resize):
    photo = PHOTOS["chelsea"]  # 451x300: down- and upsampling, whole image and inner boxes
    expected = np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC, box=box))
    got = resize_boxes(photo[None], np.asarray([box]), size)[0]
    np.testing.assert_array_equal(got, expected)


def batchable_augment(**overrides):
    from ml_collections import ConfigDict

    settings = dict(random_resized_crop=True, crop_scale=(0.08, 1.0), interpolation="bicubic", hflip=True)
    return ConfigDict({**settings, "randaugment": "", "random_erasing": 0.0, **overrides})


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("height, width", [(32, 40), (60, 28), (26, 30)])  # landscape; portrait (Pillow 13 resizes
def test_the_batch_transform_draws_and_gives_what_the_per_image_transform_gives(crop, height, width):  # it rows first)
    images = np.random.default_rng(0).integers(0, 256, (48, height, width, 3), dtype=np.uint8)
    settings = dict(
        size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), augment=batchable_augment(random_resized_crop=crop)
    )
    one_by_one = np.stack(
        [train_transform(image, np.random.default_rng([3, i]), **settings) for i, image in enumerate(images)]
    )
    rngs = [np.random.default_rng([3, i]) for i in range(len(images))]
    batched = train_transform_batch(images, rngs, **settings)
    np.testing.assert_array_equal(batched, one_by_one)  # same boxes, flips, pixels, float32 normalisation
    with pytest.raises(ValueError, match="RandAugment"):
        train_transform_batch(images, rngs, **{**settings, "augment": batchable_augment(randaugment="rand-m9")})


def test_uniform_draws_are_numpys_uniform():
    """``_uniform`` is ``rng.uniform``'s formula without its per-call parsing: the same draws, bit
    for bit where numpy does not fuse the multiply-add (x86-64), within an ulp anywhere."""
    ours, numpys = np.random.default_rng(9), np.random.default_rng(9)
    for low, high in [(0.08, 1.0), (np.log(3 / 4), np.log(4 / 3)), (0.02, 1 / 3), (-1.2, 0.9)]:
        drawn = np.array([_uniform(ours, low, high) for _ in range(5000)])
        if platform.machine() in ("x86_64", "AMD64"):  # the same crops as before the change, bit for bit
            np.testing.assert_array_equal(drawn, numpys.uniform(low, high, 5000))
        else:
            np.testing.assert_array_max_ulp(drawn, numpys.uniform(low, high, 5000), maxulp=1)
        assert low <= drawn.min() and drawn.max() < high


@pytest.mark.parametrize("scale", [(1.0, 0.08), (0.0, 1.0), (0.08, float("nan"))])
def test_a_crop_scale_uniform_would_refuse_is_refused_naming_the_setting(scale):
    with pytest.raises(ValueError, match="augment.crop_scale"):
        crop_box(32, 32, np.random.default_rng(0), scale)


def test_crop_boxes_are_distributed_as_timms_random_resized_crop():
    """The peer's own draw (timm's ``RandomResizedCropAndInterpolation.get_params``, Python's
    ``random``) and ours give boxes of the same area, aspect and offset distributions."""
    transforms = pytest.importorskip("timm.data.transforms")
    stats = pytest.importorskip("scipy.stats")
    import random

    width, height, count = 500, 375, 20000
    image, rng = Image.new("RGB", (width, height)), np.random.default_rng(11)
    random.seed(11)
    ours = np.array([crop_box(width, height, rng) for _ in range(count)], float)  # left, top, right, bottom
    top, left, h, w = np.array(
        [
            transforms.RandomResizedCropAndInterpolation.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
            for _ in range(count)
        ],
        float,
    ).T
    theirs = np.stack([left, top, left + w, top + h], axis=1)
    for boxes in (ours, theirs):
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()

    def features(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return {"area": w * h / (width * height), "log aspect": np.log(w / h), "left": boxes[:, 0] / (width - w + 1)}

    for name, ours_values in features(ours).items():
        assert stats.ks_2samp(ours_values, features(theirs)[name]).pvalue > 1e-3, name


def mixed_sizes() -> InMemoryImages:
    """In-memory images, every fifth one of another size."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 20) if i % 5 else (26, 18), dtype=np.uint8) for i in range(23)]
    return InMemoryImages([np.repeat(image[..., None], 3, axis=-1) for image in images], "mixed")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_with_a_batch_transform_streams_the_per_image_loaders_batches(num_workers):
    source, settings = mixed_sizes(), dict(size=16, mean=(0.5,) * 3, std=(0.25,) * 3, augment=batchable_augment())

    def transform(image, rng):
        return train_transform(image, rng, **settings)

    def batch_transform(images, rngs):
        return train_transform_batch(images, rngs, **settings)

    per_image = TrainLoader(source, transform, 8, seed=4, num_workers=0)
    batched = TrainLoader(source, transform, 8, seed=4, num_workers=num_workers, batch_transform=batch_transform)
    switched = per_image.with_batch_transform(batch_transform)
    stream = batched.iterate(3)  # a resumed run: steps 3.. (some batches mix sizes and go image by image)
    for step in range(3, 9):
        expected = per_image.batch(step)
        got = next(stream)
        np.testing.assert_array_equal(got.images, expected.images)
        np.testing.assert_array_equal(got.labels, expected.labels)
        np.testing.assert_array_equal(switched.batch(step).images, expected.images)
    stream.close()


def test_posterize_never_asks_pillow_for_0_bits():
    """timm's noisy magnitude can drive posterize to 0 bits, which Pillow >= 13 refuses; ours
    clips the level to [0, 10] and keeps at least 1 bit, whatever the magnitude's noise."""
    image = np.ascontiguousarray(PHOTOS["rocket"][:64, :64])
    for level in np.linspace(0.0, 10.0, 41):
        out = RAND_AUGMENT_OPS["PosterizeIncreasing"](image, float(level), np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8
    for seed in range(200):  # magnitude 9 with a huge spread: levels far outside [0, 10] are drawn and clipped
        rand_augment(image, np.random.default_rng(seed), magnitude=9.0, magnitude_std=50.0, num_ops=3, prob=1.0)


@pytest.fixture
def local_tfds_dataset():
    """Registers the vitjax_test_shapes tfds builder (tfds is the optional ``tfds`` extra)."""
    pytest.importorskip("tensorflow_datasets")
    import local_tfds.shapes  # noqa: F401


def test_tfds_source_builds_and_reads_a_local_dataset(tmp_path, local_tfds_dataset):
    source = TfdsSource("vitjax_test_shapes", "train", data_dir=str(tmp_path))
    assert len(source) == 30 and source.num_classes == 3 and list(source.class_names) == ["squares", "stripes", "noise"]
    image, label = source.load(4)
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8 and label in (0, 1, 2)
    assert (tmp_path / "vitjax_test_shapes").is_dir()
    with pytest.raises(DataError, match="tfds dataset 'no_such_dataset_xyz'"):
        TfdsSource("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_training_runs_on_tfds_and_on_file_lists(tmp_path, local_tfds_dataset):
    from test_train import tiny_config

    config = tiny_config(
        num_steps=2,
        eval_batch_size=8,
        **{"model.num_classes": 3, "data.source": "tfds:vitjax_test_shapes", "data.data_dir": str(tmp_path / "tfds")},
    )
    results = train.train_and_evaluate(config, tmp_path / "tfds_run")
    assert results["count"] == 12

    lines = write_images(tmp_path / "files", count=16)
    (tmp_path / "files" / "train_list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "files" / "val_list.txt").write_text("\n".join(lines[:8]) + "\n")
    config = tiny_config(
        num_steps=2,
        eval_batch_size=8,
        **{"model.num_classes": 3, "data.source": "filelist", "data.root": str(tmp_path / "files")},
    )
    assert train.train_and_evaluate(config, tmp_path / "files_run")["count"] == 8


def write_folder(split_dir, counts: dict, size=(40, 30)):
    """``split_dir/<class>/img_<i>.(jpg|png)``: real JPEGs and PNGs of random pixels."""
    rng = np.random.RandomState(1)
    for name, count in counts.items():
        (split_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.randint(0, 255, (size[1], size[0], 3), np.uint8)
            Image.fromarray(pixels).save(split_dir / name / f"img_{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_source_takes_class_names_from_sorted_folder_names(tmp_path):
    write_folder(tmp_path / "train", {"zebra": 2, "ant": 3, "cat": 1})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "ant" / ".hidden.jpg").write_bytes(b"")
    write_folder(tmp_path / "train" / "cat" / "more", {"deeper": 1})  # nested folders belong to their class
    write_folder(tmp_path / "val", {"zebra": 1, "ant": 1})  # a class may be absent from val
    train_source = ImageFolderSource(tmp_path / "train")
    assert train_source.class_names == ("ant", "cat", "zebra") and train_source.num_classes == 3
    assert len(train_source) == 7 and list(train_source.labels) == [0, 0, 0, 1, 1, 2, 2]
    assert train_source.describe(3).endswith("cat/img_0.jpg") and train_source.describe(4).endswith(
        "cat/more/deeper/img_0.jpg"
    )
    image, label = train_source.load(1)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8 and label == 0
    val = ImageFolderSource(tmp_path / "val", class_names=train_source.class_names)
    assert val.num_classes == 3 and list(val.labels) == [0, 2]


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"train: image folder not found"):
        ImageFolderSource(tmp_path / "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train: no class folders \(expected .*train/<class>/<image>\)"):
        ImageFolderSource(tmp_path / "train")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match=r"train/cat: class folder has no images"):
        ImageFolderSource(tmp_path / "train")
    write_folder(tmp_path / "train", {"cat": 1, "dog": 1})
    write_folder(tmp_path / "val", {"cat": 1, "cow": 1, "yak": 1})
    data = base_config().data
    data.update(source="folder", root=str(tmp_path))
    with pytest.raises(DataError, match=r"val: class folder\(s\) cow, yak not among the 2 classes of .*train"):
        make_source(data, train=False)
    data.val_folder = "validation"
    with pytest.raises(DataError, match=r"validation: image folder not found"):
        make_source(data, train=False)
    data.root = ""
    with pytest.raises(DataError, match="data.source=folder needs data.root"):
        make_source(data, train=True)


def test_image_folder_bad_images_follow_the_policy(tmp_path):
    write_folder(tmp_path / "train", {"a": 4, "b": 4})
    (tmp_path / "train" / "b" / "img_2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    source = ImageFolderSource(tmp_path / "train")
    loader = TrainLoader(source, eval_transform, 8, seed=0, on_bad_image="skip")
    assert np.isfinite(loader.batch(0).images).all()
    assert len(loader.bad_images.skipped) == 1 and "b/img_2.jpg: cannot decode image" in loader.bad_images.skipped[0]
    with pytest.raises(ImageError, match=r"b/img_2.jpg: cannot decode image"):
        TrainLoader(source, eval_transform, 8, seed=0, on_bad_image="fail").batch(0)


def test_training_and_prediction_on_an_image_folder(tmp_path):
    from test_train import tiny_config

    classes = {"apple": 6, "banana": 5, "cherry": 5}
    write_folder(tmp_path / "data" / "train", classes)
    write_folder(tmp_path / "data" / "val", {"apple": 3, "cherry": 2})
    overrides = {"model.num_classes": 3, "data.source": "folder", "data.root": str(tmp_path / "data")}
    results = train.train_and_evaluate(
        tiny_config(num_steps=2, batch_size=8, eval_batch_size=8, **overrides), tmp_path / "run"
    )
    assert results["count"] == 5
    image = tmp_path / "data" / "val" / "apple" / "img_0.jpg"
    predictions = train.predict(
        tiny_config(**overrides, **{"predict.images": str(image), "predict.topk": 3}), tmp_path / "run"
    )
    assert sorted(name for name, _ in predictions[0]) == sorted(classes)


WITHOUT_TENSORFLOW = """
import importlib.machinery
import sys


class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    \"\"\"The standard path finder, blind to tensorflow and tensorflow_datasets: both import
    and importlib.util.find_spec see them as not installed.\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""

NO_TENSORFLOW_RUN = (
    WITHOUT_TENSORFLOW
    + """
import pathlib
import pytest
tests, root = sys.argv[1:3]
sys.path.insert(0, tests)
from test_train import tiny_config
from vitjax.training import train
from vitjax.training.config import base_config
from vitjax.data.sources import DataError, make_source

root = pathlib.Path(root)
digits = make_source(base_config().data, train=True)
assert len(digits) == 1437 and digits.load(0)[0].shape == (32, 32, 3)
folder = train.train_and_evaluate(tiny_config(num_steps=2, batch_size=8, eval_batch_size=8, **{
    "model.num_classes": 2, "data.source": "folder", "data.root": str(root / "data")}), root / "folder_run")
assert folder["count"] == 4, folder
data = base_config().data
data.source = "tfds:imagenet2012"
with pytest.raises(DataError) as error:
    make_source(data, train=True)
print(error.value)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "tensorflow_datasets"))
assert not loaded, loaded
"""
)


def test_folder_training_and_digits_need_no_tensorflow_and_tfds_names_its_extra(tmp_path):
    write_folder(tmp_path / "data" / "train", {"cat": 4, "dog": 4})
    write_folder(tmp_path / "data" / "val", {"cat": 2, "dog": 2})
    command = [sys.executable, "-c", NO_TENSORFLOW_RUN, str(Path(__file__).parent), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.source=tfds:imagenet2012 needs TensorFlow Datasets" in result.stdout
    assert 'pip install "vitjax[tfds]"' in result.stdout


def test_an_undecoded_image_whose_pixels_are_cut_short_is_skipped_or_named_like_any_bad_image(tmp_path):
    """With ``data.reduced_decode`` the training loader reads headers and leaves decoding to the
    transform; a file whose header is whole but whose pixels are truncated fails there, and
    ``on_bad_image`` treats it as it treats a file that cannot be opened."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.jpg", quality=90)
    cut = tmp_path / "a" / "0.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    source = encoded(ImageFolderSource(str(tmp_path)))

    def transform(image, rng):
        return train_transform(image, rng, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, augment=batchable_augment())

    skipping = TrainLoader(source, transform, 6, seed=0, on_bad_image="skip", num_workers=0)
    batch = skipping.batch(0)  # every example of the epoch: the cut file among them, replaced by the next
    assert batch.images.shape == (6, 32, 32, 3) and batch.mask.all()
    assert len(skipping.bad_images.skipped) == 1 and "0.jpg: cannot decode image" in skipping.bad_images.skipped[0]
    with pytest.raises(ImageError, match=r"a/0\.jpg: cannot decode image .*truncated"):
        TrainLoader(source, transform, 6, seed=0, on_bad_image="fail", num_workers=0).batch(0)


def test_the_batched_resize_gives_pillows_pixels_for_any_shape_box_and_size(batched_resize):
    """Pillow 13 resizes rows first when the height shrinks by more than twice the width; the
    batched resize follows its order: random shapes (portrait, landscape, up- and downscaling,
    near the rule's threshold), boxes and sizes, each equal to Pillow's own resize."""
    from vitjax.data.augment import resize_boxes

    rng = np.random.default_rng(5)
    for _ in range(300):
        height, width, size = (int(v) for v in rng.integers(4, 60, 3))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (left, top, int(rng.integers(left + 1, width + 1)), int(rng.integers(top + 1, height + 1)))
        pillow = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box))
        ours = resize_boxes(image[None], np.array([box]), size)[0].astype(np.uint8)
        np.testing.assert_array_equal(ours, pillow, err_msg=f"{height}x{width} -> {size}, box {box}")


def test_a_gray_batch_is_resized_once_per_pixel_and_gives_pillows_pixels(batched_resize):
    """Gray images stored as RGB (digits, MNIST-like sets) are resized one channel at a time: the
    same pixels as Pillow's resize of each RGB image, and a batch with one colour image among gray
    ones (resized in all three channels) too."""
    from vitjax.data.augment import resize_boxes

    gray = np.asarray(Image.fromarray(PHOTOS["chelsea"]).convert("L").convert("RGB"))
    rng = np.random.default_rng(11)
    boxes = []
    for _ in range(6):
        left, top = int(rng.integers(0, 200)), int(rng.integers(0, 150))
        boxes.append((left, top, left + int(rng.integers(30, 250)), top + int(rng.integers(30, 150))))
    for images in (np.stack([gray] * 6), np.stack([gray] * 5 + [PHOTOS["chelsea"]])):
        ours = resize_boxes(images, np.asarray(boxes), 48)
        assert ours.dtype == np.uint8
        for image, box, got in zip(images, boxes, ours, strict=True):
            np.testing.assert_array_equal(
                got, np.asarray(Image.fromarray(image).resize((48, 48), Image.BICUBIC, box=box))
            )
