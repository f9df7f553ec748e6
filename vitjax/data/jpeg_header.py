"""What Pillow's ``Image.open`` reads from a JPEG's header, read from the bytes directly.

The training pipeline opens every image to learn its size and EXIF orientation before it draws
the crop (:func:`vitjax.data.transforms.open_image`). For a JPEG, ``Image.open`` walks the
header's segments with a read call per field and builds Python objects for all of them, which
costs as much as resizing the crop. :func:`read` walks the same segments in the bytes already in
memory and takes only the frame size, the number of components and the EXIF orientation.

It answers only for the plain cases it can answer exactly as Pillow does, and returns ``None`` for
anything else, which then goes to Pillow (the same result, or Pillow's own error):

* 8-bit frames of 1 (L) or 3 (RGB) components, no larger than ``Image.MAX_IMAGE_PIXELS`` (Pillow
  warns or refuses beyond that);
* at most one EXIF segment, whose orientation, if present, is one SHORT in the first directory
  (where EXIF has none, the last XMP segment's ``tiff:Orientation``, as ``getexif()`` reads it);
  no MPF segment (an MPO file);
* every segment whole and well formed (quantization tables whole), up to the start of the scan.

``tests/vitjax/test_jpeg_header.py`` compares it with ``Image.open`` on JPEGs of every orientation,
progressive and gray ones, files it hands to Pillow, and truncated and corrupted bytes.
"""

from __future__ import annotations

import re
import struct

from PIL import Image

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SEGMENTS = frozenset(range(0xC0, 0xFF)) - frozenset({0xC8, 0xD8, 0xD9}) - frozenset(range(0xD0, 0xD8))
_ORIENTATION = 0x0112
_SHORT = 3
_ABSENT = -1  # no orientation tag in the EXIF directory
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def read(data: bytes) -> tuple[int, int, str, int] | None:
    """``(width, height, mode, EXIF orientation)`` of a JPEG as ``Image.open`` gives them (the size
    as stored, before orientation; the orientation as ``getexif()`` has it, 1 where there is none),
    or ``None`` where this reader leaves the file to Pillow."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    position, end = 2, len(data)
    frame = exif = xmp = None
    while True:
        if position + 4 > end or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker not in _SEGMENTS:
            return None
        length = (data[position + 2] << 8) | data[position + 3]
        payload = data[position + 4 : position + 2 + length]
        if length < 2 or len(payload) != length - 2:
            return None
        if marker in _SOF:
            if frame is not None or len(payload) < 6:
                return None
            frame = payload
        elif marker == 0xDB and not _quantization_tables_whole(payload):
            return None  # Pillow refuses it ("bad quantization table marker")
        elif marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            if exif is not None:  # Pillow joins several: leave them to it
                return None
            exif = payload[6:]
        elif marker == 0xE1 and payload.startswith(_XMP):
            xmp = payload[len(_XMP) :]  # Pillow keeps the last
        elif marker == 0xE2 and payload.startswith(b"MPF\0"):
            return None  # a multi-picture file: Pillow opens it as MPO
        position += 2 + length
    if frame is None:
        return None
    bits, height, width, components = frame[0], (frame[1] << 8) | frame[2], (frame[3] << 8) | frame[4], frame[5]
    if bits != 8 or components not in (1, 3) or width == 0 or height == 0:
        return None
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None
    orientation = _ABSENT if exif is None else _exif_orientation(exif)
    if orientation is None:
        return None
    if orientation == _ABSENT:  # as getexif(): an orientation from XMP, where EXIF has none
        match = re.search(rb'tiff:Orientation(="|>)([0-9])', xmp) if xmp is not None else None
        orientation = int(match[2]) if match else 1
    return width, height, "L" if components == 1 else "RGB", orientation


def _quantization_tables_whole(payload: bytes) -> bool:
    """Whether a DQT segment holds whole tables: each a byte (precision, index), then 64 values of 1
    byte (precision 0) or 2."""
    position = 0
    while position < len(payload):
        position += 1 + (64 if payload[position] >> 4 == 0 else 128)
    return position == len(payload)


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation in a TIFF header's first directory (``_ABSENT`` where it has none), or
    ``None`` where the directory is not plainly readable or the tag is not one SHORT."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order = "<" if tiff[0] == 0x49 else ">"
    (offset,) = struct.unpack_from(order + "L", tiff, 4)
    if offset < 8 or offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    if offset + 2 + 12 * count > len(tiff):
        return None
    found = []
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, values = struct.unpack_from(order + "HHL", tiff, entry)
        if tag == _ORIENTATION:
            if kind != _SHORT or values != 1:
                return None
            found.append(struct.unpack_from(order + "H", tiff, entry + 8)[0])
    if len(found) > 1:
        return None
    return found[0] if found else _ABSENT
