"""Decode images from untrusted bytes or files: the one place the project decodes an image.

Every reader (the SA-1B converter, ``fastsam predict``, the evaluation loops) goes through
``decode_image`` / ``read_image``, so every one of them gets the same two guards:

* **A pixel limit checked before decoding.** The header is parsed first (for JPEG
  libjpeg-turbo's own header reader gives the size it would allocate; for other formats
  Pillow's ``Image.open`` reads the size without decoding) and an image above ``max_pixels``
  is refused. A 629-byte JPEG can declare 20000 x 20000 pixels, which would cost 1.2 GB to
  decode. (Pillow also refuses non-JPEG images over its own limit, about 179 MP.)
* **Corrupt data is reported, not silently filled in.** OpenCV and Pillow decode a JPEG with
  garbage in its middle (or cut short but ending in an end-of-image marker) and fill what they
  could not read with grey. JPEGs are decoded here by libjpeg-turbo through ``simplejpeg``
  with its warnings made errors (``strict=True``): "Corrupt JPEG data", "Premature end of JPEG
  file" and the like. Other formats are checked by Pillow's ``verify`` (PNG: every chunk's CRC)
  and decoded by OpenCV.

``corrupt="error"`` (the converter: a counted skip) raises on corrupt data;
``corrupt="warn"`` (prediction, evaluation: the image is the user's input and is kept) logs a
warning naming the file and decodes what libjpeg can.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

log = logging.getLogger(__name__)

COLORS = ("rgb", "bgr")
CORRUPT_MODES = ("error", "warn")
EXIF_ORIENTATION = 0x0112
JPEG_MAGIC = b"\xff\xd8\xff"
BYTES_PER_PIXEL_LIMIT = 8  # a file larger than 8 bytes per allowed pixel is refused unread


# simplejpeg reports bad data as ValueError, and some truncated headers as KeyError (seen here
# on a JPEG cut to 50 bytes)
JPEG_ERRORS = (ValueError, KeyError, IndexError)


class ImageReadError(ValueError):
    """An image that cannot be used. ``reason`` is a short stable key (the converter counts
    skips by it): ``unreadable``, ``not_an_image``, ``too_many_pixels``, ``corrupt_image``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def image_header(data: bytes, name: str = "image") -> tuple[int, int, str, int]:
    """``(height, width, format, EXIF orientation 1..8)`` from the header only (no decoding).

    A JPEG's size is libjpeg-turbo's own reading of its frame header (what decoding would
    allocate); other formats' come from Pillow. Raises ImageReadError('not_an_image') for bytes
    no reader recognises, 'corrupt_image' for a broken JPEG header."""
    if data[:3] == JPEG_MAGIC:
        try:
            height, width = simplejpeg.decode_jpeg_header(data, strict=False)[:2]
        except JPEG_ERRORS as exc:
            raise ImageReadError("corrupt_image", f"{name}: bad JPEG header ({exc})") from exc
        fmt, orientation = "JPEG", _orientation(data)
    else:
        try:
            with _open(data) as image:
                (width, height), fmt = image.size, image.format or "?"
        except Image.DecompressionBombError as exc:  # Pillow's own limit, ~179 MP
            raise ImageReadError("too_many_pixels", f"{name}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes
            raise ImageReadError("not_an_image", f"{name}: not a readable image "
                                 f"({type(exc).__name__}: {exc})") from exc
        orientation = _orientation(data)
    if width < 1 or height < 1:
        raise ImageReadError("not_an_image", f"{name}: image of size {width}x{height}")
    return height, width, fmt, orientation


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8), 1 if absent or unreadable (as OpenCV takes it)."""
    try:
        with _open(data) as image:
            value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block is ignored, as OpenCV does
        return 1
    return value if 1 <= value <= 8 else 1


def check_pixels(height: int, width: int, max_pixels: int, name: str = "image") -> None:
    """Raise ImageReadError('too_many_pixels') if ``height x width`` exceeds ``max_pixels``."""
    if height * width > max_pixels:
        raise ImageReadError(
            "too_many_pixels", f"{name}: {width}x{height} = {height * width / 1e6:.1f} MP is "
            f"above the limit of {max_pixels / 1e6:g} MP (max_pixels); refused before decoding")


def decode_image(data: bytes, max_pixels: int, *, name: str = "image", color: str = "rgb",
                 corrupt: str = "error", orientation: bool = True) -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3) in ``color`` order (``rgb`` or ``bgr``).

    ``max_pixels``: larger images are refused from their header. ``corrupt``: ``error`` raises
    on corrupt data, ``warn`` logs and keeps what decodes. ``orientation``: apply the EXIF
    orientation, as ``cv2.imread`` / ``cv2.imdecode`` do by default. Raises ImageReadError
    (a ValueError) whose message starts with ``name``.
    """
    if color not in COLORS or corrupt not in CORRUPT_MODES:
        raise ValueError(f"color must be one of {COLORS} and corrupt one of {CORRUPT_MODES}")
    height, width, fmt, turn = image_header(data, name)
    check_pixels(height, width, max_pixels, name)
    if fmt == "JPEG":
        image = _decode_jpeg(data, name, color, corrupt)
    else:
        image = _decode_other(data, name, color, corrupt)
    if image.shape[:2] != (height, width):
        raise ImageReadError("corrupt_image", f"{name}: decoded {image.shape[1]}x"
                             f"{image.shape[0]}, but the header says {width}x{height}")
    return np.ascontiguousarray(apply_orientation(image, turn if orientation else 1))


def _decode_jpeg(data: bytes, name: str, color: str, corrupt: str) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace=color.upper(), strict=True)
    except JPEG_ERRORS as exc:
        if corrupt == "error":
            raise ImageReadError("corrupt_image", f"{name}: corrupt JPEG ({exc})") from exc
        log.warning("%s: corrupt JPEG (%s); using what decodes", name, exc)
    try:
        return simplejpeg.decode_jpeg(data, colorspace=color.upper(), strict=False)
    except JPEG_ERRORS as exc:
        raise ImageReadError("corrupt_image", f"{name}: undecodable JPEG ({exc})") from exc


def _decode_other(data: bytes, name: str, color: str, corrupt: str) -> np.ndarray:
    try:
        with _open(data) as image:
            image.verify()  # PNG: every chunk's CRC; cheap, decodes nothing
    except Exception as exc:  # noqa: BLE001 - any verifier failure on untrusted bytes
        if corrupt == "error":
            raise ImageReadError("corrupt_image", f"{name}: corrupt image data "
                                 f"({type(exc).__name__}: {exc})") from exc
        log.warning("%s: corrupt image data (%s); using what decodes", name, exc)
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError("corrupt_image", f"{name}: undecodable image data")
    return image[..., ::-1] if color == "rgb" else image


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (H, W, C) stored pixels upright for EXIF orientation 1..8 (a view, no copy)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(1, 0, 2)  # 5: transpose; 6, 7, 8 start from it too
        if orientation in (6, 7):
            image = image[:, ::-1]
        if orientation in (7, 8):
            image = image[::-1]
        return image
    if orientation in (2, 3):
        image = image[:, ::-1]
    if orientation in (3, 4):
        image = image[::-1]
    return image


def read_image(path: str | Path, max_pixels: int, **options) -> np.ndarray:
    """An image file -> uint8 (H, W, 3); ``options`` as ``decode_image``.

    Raises FileNotFoundError for a missing file and ImageReadError otherwise; both name the
    file. A file larger than ``BYTES_PER_PIXEL_LIMIT`` bytes per allowed pixel is refused
    before it is read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot read image {path}: no such file")
    if not path.is_file():
        raise ImageReadError("unreadable", f"cannot read image {path}: not a regular file")
    limit = BYTES_PER_PIXEL_LIMIT * max_pixels + (1 << 20)
    if path.stat().st_size > limit:
        raise ImageReadError("too_many_pixels", f"cannot read image {path}: "
                             f"{path.stat().st_size / 1e6:.0f} MB is more than an image of "
                             f"{max_pixels / 1e6:g} MP (max_pixels) can need")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError("unreadable", f"cannot read image {path}: {exc}") from exc
    return decode_image(data, max_pixels, name=f"cannot read image {path}", **options)


def read_rgb(path: str | Path, max_pixels: int, orientation: bool = True) -> np.ndarray:
    """An image file -> RGB uint8 (H, W, 3) for a model: ``read_image`` with corrupt data
    logged and kept (what decodes), as ``cv2.imread`` would; ``orientation`` as
    ``decode_image``."""
    return read_image(path, max_pixels, color="rgb", corrupt="warn", orientation=orientation)
