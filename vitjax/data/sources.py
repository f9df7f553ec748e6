"""Random-access image sources: scikit-learn digits, PaddleClas file lists, image folders, tfds.

A source maps an index to ``(RGB uint8 HWC image, label)``; random access is what
makes the data order a pure function of (seed, step), so runs resume exactly. Sources of
image files (file lists, folders) can also hand out the file read but not decoded
(``load_encoded``; :class:`EncodedSource` makes that their ``load``), which lets the training
transform decode a JPEG at the reduced scale its random crop allows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from vitjax.data.transforms import EncodedImage, ImageError, load_rgb, open_image


class DataError(ValueError):
    """A dataset that cannot be used: missing files, malformed lists, bad options."""


class Source(Protocol):
    num_classes: int
    class_names: Sequence[str] | None

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, int]: ...

    def describe(self, index: int) -> str: ...


class DigitsSource:
    """scikit-learn's 8x8 handwritten digits (real scans, shipped with the package),
    upsampled to ``size`` pixels RGB. A fixed stratified 80/20 split gives train/validation."""

    num_classes = 10
    class_names = tuple(str(d) for d in range(10))

    def __init__(self, split: str, size: int = 32):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "validation"):
            raise DataError(f"digits has splits 'train' and 'validation', not {split!r}")
        digits = load_digits()
        index = np.arange(len(digits.target))
        train, val = train_test_split(index, test_size=0.2, random_state=0, stratify=digits.target)
        chosen = train if split == "train" else val
        pixels = (digits.images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = np.stack(
            [np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC).convert("RGB")) for p in pixels]
        )
        self.labels = digits.target[chosen].astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"digits[{index}]"


class FileListSource:
    """PaddleClas's file lists: ``<root>/<list>`` with one ``relative/path.jpg label`` per line."""

    def __init__(
        self, root: str | os.PathLike, list_file: str, delimiter: str | None = None, num_classes: int | None = None
    ):
        self.root = Path(root)
        list_path = Path(list_file) if Path(list_file).is_absolute() else self.root / list_file
        if not list_path.is_file():
            raise DataError(f"{list_path}: file list not found")
        self.paths, labels = [], []
        for number, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(delimiter)
            if len(parts) < 2:
                raise DataError(f"{list_path}:{number}: expected 'path label', got {line!r}")
            try:
                labels.append(int(parts[-1]))
            except ValueError:
                raise DataError(f"{list_path}:{number}: label {parts[-1]!r} is not an integer") from None
            self.paths.append(" ".join(parts[:-1]))
        if not self.paths:
            raise DataError(f"{list_path}: file list is empty")
        self.labels = np.asarray(labels, np.int32)
        self.num_classes = num_classes or int(self.labels.max()) + 1
        self.class_names = None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return load_rgb(self.root / self.paths[index]), int(self.labels[index])

    def load_encoded(self, index: int) -> tuple[EncodedImage, int]:
        """The file of ``load(index)`` read and its header checked, not decoded."""
        return open_image(self.root / self.paths[index]), int(self.labels[index])

    def describe(self, index: int) -> str:
        return str(self.root / self.paths[index])


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def folder_classes(split_dir: Path) -> list[str]:
    """The class names of an image folder split: its subfolders' names, sorted."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: image folder not found (expected {split_dir}/<class>/<image>)")
    names = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    return names


def _images_under(folder: Path) -> list[str]:
    """Image files below ``folder`` (any depth), as sorted paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        relative = os.path.relpath(dirpath, folder)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(name if relative == "." else os.path.join(relative, name))
    return sorted(found)


class ImageFolderSource:
    """Images stored as ``<split_dir>/<class>/<image>`` (ImageNet's ``train/n01440764/x.JPEG``).

    Labels index ``class_names``, which are the train folder's subfolder names, sorted;
    an eval split passes the train split's names so that its labels mean the same
    classes (a class of its own is an error). Files are found at any depth below a class
    folder, by suffix (``.jpg``, ``.png``, ...; hidden files are ignored), in sorted order.
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        classes_from: str = "the training classes",
    ):
        self.root = Path(split_dir)
        present = set(folder_classes(self.root))
        defines_classes = class_names is None
        if defines_classes:
            class_names = sorted(present)
        else:
            unknown = sorted(set(present) - set(class_names))
            if unknown:
                shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                raise DataError(
                    f"{self.root}: class folder(s) {shown} not among the {len(class_names)} classes of {classes_from}"
                )
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        paths, labels = [], []
        for label, name in enumerate(self.class_names):
            if name not in present:
                continue
            images = _images_under(self.root / name)
            if not images and defines_classes:
                raise DataError(f"{self.root / name}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += [os.path.join(name, image) for image in images]
            labels += [label] * len(images)
        if not paths:
            raise DataError(f"{self.root}: no images in its class folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
        # Compact fixed-width bytes: a million paths stay tens of MB and pickle quickly to workers.
        self.paths = np.asarray([os.fsencode(p) for p in paths])
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return load_rgb(self.root / os.fsdecode(self.paths[index])), int(self.labels[index])

    def load_encoded(self, index: int) -> tuple[EncodedImage, int]:
        """The file of ``load(index)`` read and its header checked, not decoded."""
        return open_image(self.root / os.fsdecode(self.paths[index])), int(self.labels[index])

    def describe(self, index: int) -> str:
        return str(self.root / os.fsdecode(self.paths[index]))


class EncodedSource:
    """A file source whose ``load`` gives :class:`EncodedImage` s (``source.load_encoded``), for
    a transform that decodes them itself (``augment.train_transform``: at the scale its crop
    allows). Errors of a missing file or a bad header are raised by ``load``, as the source's
    own; a file whose pixels are corrupt fails when the transform decodes it."""

    def __init__(self, source: FileListSource | ImageFolderSource):
        if not hasattr(source, "load_encoded"):
            raise DataError(f"{type(source).__name__} has no image files to hand out undecoded")
        self.source = source
        self.num_classes, self.class_names = source.num_classes, source.class_names

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[EncodedImage, int]:
        return self.source.load_encoded(index)

    def describe(self, index: int) -> str:
        return self.source.describe(index)


def encoded(source: Source) -> Source:
    """``source`` as an :class:`EncodedSource` where it reads image files, else unchanged (its
    images are arrays already: digits, tfds)."""
    return EncodedSource(source) if hasattr(source, "load_encoded") else source


def _import_tfds(name: str):
    """tensorflow_datasets, which only this source needs (the ``tfds`` extra)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"data.source=tfds:{name} needs TensorFlow Datasets, which is not installed ({e}): "
            'pip install "vitjax[tfds]" (or use data.source=folder / filelist / digits, which need no TensorFlow)'
        ) from None
    return tfds


class TfdsSource:
    """A tensorflow-datasets image classification split, read with random access.

    The dataset is prepared on first use in the ArrayRecord format (random access is
    what deterministic resumption needs); ``manual_dir`` is where datasets such as
    ``imagenet2012`` expect their downloaded archives.
    """

    def __init__(self, name: str, split: str, data_dir: str = "", manual_dir: str = ""):
        tfds = _import_tfds(name)

        try:
            builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
        except Exception as e:  # tfds raises many types for unknown names/bad dirs
            raise DataError(f"tfds dataset {name!r}: {e}") from None
        if not builder.is_prepared():
            config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
            try:
                builder.download_and_prepare(download_config=config, file_format="array_record")
            except Exception as e:
                raise DataError(f"tfds dataset {name!r} could not be prepared in {builder.data_dir}: {e}") from None
        if builder.info.file_format.value != "array_record":
            raise DataError(
                f"tfds dataset {name!r} in {builder.data_dir} is stored as {builder.info.file_format.value}; "
                "random access needs ArrayRecord: rebuild it with `tfds build --file_format=array_record`"
            )
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
        self._image_key, self._label_key = image_key, label_key
        self._data = builder.as_data_source(split=split)
        label = builder.info.features[label_key]
        self.num_classes = label.num_classes
        self.class_names = label.names
        self.name, self.split = name, split

    def __len__(self) -> int:
        return len(self._data)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        try:
            example = self._data[index]
        except Exception as e:
            raise ImageError(f"{self.describe(index)}: cannot decode example ({e})") from None
        image = np.asarray(example[self._image_key])
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
        return image.astype(np.uint8), int(example[self._label_key])

    def describe(self, index: int) -> str:
        return f"tfds:{self.name}/{self.split}[{index}]"


def make_source(data_config, *, train: bool, img_size: int = 32) -> Source:
    """The source ``config.data`` names, for its train or eval split."""
    kind = data_config.source
    split = data_config.train_split if train else data_config.eval_split
    if kind == "digits":
        return DigitsSource("train" if train else "validation", size=img_size)
    if kind == "filelist":
        if not data_config.root:
            raise DataError("data.source=filelist needs data.root (the image root)")
        return FileListSource(data_config.root, data_config.train_list if train else data_config.val_list)
    if kind == "folder":
        if not data_config.root:
            raise DataError("data.source=folder needs data.root (the folder holding the split folders)")
        root = Path(data_config.root).expanduser()
        train_dir = root / data_config.train_folder
        if train:
            return ImageFolderSource(train_dir)
        return ImageFolderSource(
            root / data_config.val_folder, class_names=folder_classes(train_dir), classes_from=str(train_dir)
        )
    if kind.startswith("tfds:"):
        return TfdsSource(kind[len("tfds:") :], split, data_config.data_dir, data_config.manual_dir)
    raise DataError(f"unknown data.source {kind!r}: expected digits, filelist, folder or tfds:<name>")


def source_class_names(data_config) -> Sequence[str] | None:
    """The class names ``config.data`` defines (``None`` for file lists), without reading
    more than it must: an image folder's names are its train folder's subfolders."""
    if data_config.source == "folder":
        return folder_classes(Path(data_config.root).expanduser() / data_config.train_folder)
    return make_source(data_config, train=False).class_names
