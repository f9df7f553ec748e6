"""Every image a phone or a scanner makes: 16-bit, EXIF-rotated, palette, LA, CMYK.

One decoding function serves both paths: the server's (``interop.serving.images``) and the
offline one (``vitjax.data.transforms.load_rgb``, which ``predict`` and the training data
use). Its pixels are checked against an independent expectation (and, where the format is
lossless, against OpenCV's ``imdecode``, which PaddleClas decodes with); the server's top-5
for each image must equal the offline top-5.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_serving import NAME, assert_same_top5, exported, offline_top5, serving  # noqa: F401  (exported: a fixture)

from interop.serving import ServeConfig
from interop.serving.client import Client
from interop.serving.images import decode_image
from vitjax.data.transforms import load_rgb

cv2 = pytest.importorskip("cv2")

RNG = np.random.default_rng(22)
RGB = RNG.integers(0, 256, (48, 64, 3), np.uint8)  # wide: an orientation that rotates it shows
GRAY16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
RGB16 = np.stack([GRAY16, GRAY16[::-1], GRAY16[:, ::-1]], -1)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def rgb16_png() -> bytes:
    ok, data = cv2.imencode(".png", RGB16[..., ::-1])  # Pillow cannot write 16-bit RGB
    assert ok
    return data.tobytes()


def palette_png(transparent: bool) -> bytes:
    image = Image.fromarray(RGB).quantize(16)
    return encode(image, "PNG", **({"transparency": 0} if transparent else {}))


def la_png() -> bytes:
    return encode(Image.fromarray(np.stack([RGB[..., 0], RGB[..., 1]], -1), "LA"), "PNG")


# (name, encoded bytes, the RGB pixels a decoder must give, lossless so that OpenCV must agree exactly)
CASES = [
    (
        "16-bit gray PNG",
        encode(Image.fromarray(GRAY16), "PNG"),
        np.repeat((GRAY16 >> 8).astype(np.uint8)[..., None], 3, -1),
        True,
    ),
    ("16-bit RGB PNG", rgb16_png(), (RGB16 >> 8).astype(np.uint8), True),
    ("16-bit gray TIFF (I;16B)", encode(Image.fromarray(GRAY16.astype(">u2")), "TIFF"), None, False),
    ("palette PNG", palette_png(False), np.asarray(Image.fromarray(RGB).quantize(16).convert("RGB")), True),
    (
        "palette PNG with transparency",
        palette_png(True),
        np.asarray(Image.fromarray(RGB).quantize(16).convert("RGB")),
        True,
    ),
    ("LA PNG", la_png(), np.repeat(RGB[..., :1], 3, -1), True),
    ("CMYK JPEG", encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), None, False),
    (
        "JPEG, EXIF orientation 6 (rotate 90 clockwise)",
        encode(Image.fromarray(RGB), "JPEG", quality=95, exif=exif(6)),
        "rot6",
        False,
    ),
    (
        "JPEG, EXIF orientation 3 (rotate 180)",
        encode(Image.fromarray(RGB), "JPEG", quality=95, exif=exif(3)),
        "rot3",
        False,
    ),
    (
        "JPEG, EXIF orientation 8 (rotate 90 counter-clockwise)",
        encode(Image.fromarray(RGB), "JPEG", quality=95, exif=exif(8)),
        "rot8",
        False,
    ),
]
ROTATIONS = {"rot6": -1, "rot3": 2, "rot8": 1}  # np.rot90's k for each EXIF orientation


def plain_jpeg_pixels() -> np.ndarray:
    """The same JPEG without EXIF, decoded: what the rotated ones must equal once turned."""
    return np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(RGB), "JPEG", quality=95))).convert("RGB"))


@pytest.mark.parametrize("name, data, expected, lossless", CASES, ids=[c[0] for c in CASES])
def test_decoding_scales_rotates_and_converts_like_paddleclas_opencv(tmp_path, name, data, expected, lossless):
    pixels = decode_image(data, max_pixels=10**6, name=name)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    (tmp_path / "image").write_bytes(data)
    np.testing.assert_array_equal(load_rgb(tmp_path / "image"), pixels)  # the offline path: the very same function
    if isinstance(expected, str):
        np.testing.assert_array_equal(pixels, np.rot90(plain_jpeg_pixels(), ROTATIONS[expected]))
    elif expected is not None:
        np.testing.assert_array_equal(pixels, expected)
    if "16-bit gray" in name:
        assert abs(pixels.mean() - 127.5) < 1, "16-bit gray was clipped, not scaled"
    if lossless or isinstance(expected, str):  # OpenCV (PaddleClas's decoder) applies EXIF orientation too
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        if lossless:
            np.testing.assert_array_equal(pixels, reference)
        else:
            assert reference.shape == pixels.shape


def test_32_bit_and_float_images_are_refused_with_a_reason():
    from interop.serving.errors import BadImage

    for image in (
        Image.fromarray(GRAY16.astype(np.int32) * 4096, "I"),
        Image.fromarray(GRAY16.astype(np.float32), "F"),
    ):
        with pytest.raises(BadImage, match="no agreed 8-bit scale"):
            decode_image(encode(image, "TIFF"), max_pixels=10**6)


def test_the_server_answers_each_kind_of_image_as_the_offline_path_does(exported, tmp_path):
    from interop.serving import load_served_model

    variables, model_dir = exported
    photos = []
    for i, (name, data, _, _) in enumerate(CASES):
        (tmp_path / f"{i}").write_bytes(data)
        photos.append((name, load_rgb(tmp_path / f"{i}")))
    expected = offline_top5(variables, NAME, photos)
    with serving(
        load_served_model(model_dir, "onnxruntime", threads=1), ServeConfig(max_batch_size=4, max_images_per_request=16)
    ) as url:
        client = Client(url)
        assert_same_top5(client.classify([data for _, data, _, _ in CASES]), expected)
        for i, (_name, data, _, _) in enumerate(CASES):
            reply = client.classify([data], encoding="raw")
            assert_same_top5(reply, (expected[0][i : i + 1], expected[1][i : i + 1]))
