"""The JPEG header read without Pillow (``vitjax.data.jpeg_header``) gives what ``Image.open``
gives, or leaves the file to Pillow: on JPEGs of every EXIF orientation, gray, progressive and
CMYK ones, camera files, files with XMP or several frames, and truncated and corrupted headers."""

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import sklearn.datasets
from PIL import Image

from vitjax.data import jpeg_header, transforms
from vitjax.data.transforms import ImageError, encoded_image, open_image

CAMERA_JPEGS = [Path(skimage.data.__file__).parent / n for n in ("retina.jpg", "hubble_deep_field.jpg", "rocket.jpg")]
CAMERA_JPEGS += [Path(sklearn.datasets.__file__).parent / "images" / n for n in ("china.jpg", "flower.jpg")]


def jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def exif_with(tag_values: dict[int, int]) -> bytes:
    exif = Image.Exif()
    for tag, value in tag_values.items():
        exif[tag] = value
    return exif.tobytes()


def pillows_header(data: bytes) -> tuple:
    """What ``open_image`` made of a file before the reader: Pillow's ``Image.open``."""
    return transforms._header(io.BytesIO(data), "x.jpg")


def ours(data: bytes) -> tuple:
    image = encoded_image(data, "x.jpg")
    return image.width, image.height, image.format, image.mode, image.orientation


def with_xmp(data: bytes, orientation: str) -> bytes:
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description " + orientation.encode() + b"/></x:xmpmeta>"
    segment = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    return data[:2] + segment + data[2:]


PIXELS = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)


def plain_jpegs() -> dict[str, bytes]:
    files = {
        "baseline": jpeg(PIXELS),
        "progressive": jpeg(PIXELS, progressive=True),
        "gray": jpeg(PIXELS[..., 0]),
        "4:4:4, optimized": jpeg(PIXELS, subsampling=0, optimize=True),
        "comment": jpeg(PIXELS, comment=b"hello"),
        "exif without orientation": jpeg(PIXELS, exif=exif_with({0x010F: "vitjax"})),
        "icc profile": jpeg(PIXELS, icc_profile=b"\0" * 300),
    }
    for orientation in range(0, 10):
        files[f"orientation {orientation}"] = jpeg(PIXELS, exif=exif_with({0x0112: orientation, 0x0131: "vitjax"}))
    # Pillow takes an orientation from XMP where EXIF has none
    files["xmp orientation"] = with_xmp(jpeg(PIXELS), 'tiff:Orientation="3"')
    files["xmp orientation, element"] = with_xmp(jpeg(PIXELS), "<tiff:Orientation>7</tiff:Orientation>")
    files["xmp without orientation"] = with_xmp(jpeg(PIXELS), 'tiff:Make="vitjax"')
    files["exif orientation before xmp's"] = with_xmp(jpeg(PIXELS, exif=exif_with({0x0112: 6})), 'tiff:Orientation="3"')
    files.update({f"camera {path.name}": path.read_bytes() for path in CAMERA_JPEGS})
    return files


@pytest.mark.parametrize("name", list(plain_jpegs()))
def test_plain_jpegs_are_read_without_pillow_exactly_as_pillow_reads_them(name):
    data = plain_jpegs()[name]
    assert jpeg_header.read(data) is not None  # the reader answered: Pillow was not asked
    assert ours(data) == pillows_header(data)


def test_an_image_file_on_disk_is_read_the_same(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg(PIXELS, exif=exif_with({0x0112: 6})))
    image = open_image(path)
    assert (image.width, image.height, image.orientation, image.mode) == (21, 34, 6, "RGB")
    assert image.data == path.read_bytes()
    np.testing.assert_array_equal(image.decode(), transforms.load_rgb(path))


def mpo() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.fromarray(PIXELS), Image.fromarray(255 - PIXELS)]
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def cmyk() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def long_orientation() -> bytes:
    """An orientation stored as a LONG, not a SHORT: Pillow reads it; the reader leaves it to Pillow."""
    data = bytearray(jpeg(PIXELS, exif=exif_with({0x0112: 6})))
    at = data.index(b"\x01\x12\x00\x03\x00\x00\x00\x01")  # big-endian (Pillow's): tag 0x0112, SHORT, count 1
    data[at + 2 : at + 4] = b"\x00\x04"
    data[at + 8 : at + 12] = (6).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("make", [mpo, cmyk, long_orientation])
def test_what_the_reader_cannot_answer_exactly_goes_to_pillow(make):
    data = make()
    assert jpeg_header.read(data) is None
    assert ours(data) == pillows_header(data)


def test_an_image_past_pillows_pixel_limit_goes_to_pillow_which_refuses_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 21 x 34 is over twice that: Pillow's error
    data = jpeg(PIXELS)
    assert jpeg_header.read(data) is None
    with pytest.raises(ImageError, match="x.jpg"):
        encoded_image(data, "x.jpg")


def outcome(read, data: bytes):
    try:
        return read(data)
    except ImageError:
        return "ImageError"


def test_truncated_and_corrupted_headers_give_pillows_answer_or_pillows_error():
    """Every truncation of a header, and 3000 files with random bytes of their headers changed:
    the same size, mode and orientation as Pillow, or the same ImageError, and never another
    exception (a hostile file is named, not a traceback)."""
    files = [jpeg(PIXELS, exif=exif_with({0x0112: 8})), jpeg(PIXELS[..., 1], progressive=True)]
    rng = np.random.default_rng(0)
    answered = 0
    for data in files:
        scan = data.index(b"\xff\xda")
        cases = [data[:cut] for cut in range(scan + 4)]
        for _ in range(1500):
            mutated = bytearray(data)
            for at in rng.integers(0, scan + 2, rng.integers(1, 4)):
                mutated[at] = rng.integers(0, 256)
            cases.append(bytes(mutated))
        for case in cases:
            assert outcome(ours, case) == outcome(pillows_header, case), case[: scan + 2].hex()
            answered += jpeg_header.read(case) is not None
    assert answered > 1000  # most mutations leave a readable header, which the reader answers itself
