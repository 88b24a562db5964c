"""Request values -> RGB images: base64 (standard or URL-safe, data URLs) or raw bytes of an image in an
allowed format, its size checked from the header before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.base import upright
from ..data.images import to_rgb_array
from .errors import InvalidRequest

__all__ = ["ALLOWED_FORMATS", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "decode_image"]

#: image container formats a request may use (PIL's names); others (EPS, PDF, ...) are refused
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: formats of the returned anomaly map
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_= \t\r\n")


def _b64decode(text: str, max_bytes: int) -> bytes:
    s = text.strip()
    if s[:5].lower() == "data:":
        head, sep, rest = s.partition(",")
        if not sep or ";base64" not in head.lower():
            raise InvalidRequest("a data URL must be base64-encoded: 'data:image/png;base64,<data>'")
        s = rest
    s = "".join(s.split())  # MIME base64 wraps lines
    if not s:
        raise InvalidRequest("the image is empty (zero bytes); send the base64 encoding of a PNG or JPEG file")
    if len(s) > (max_bytes * 4) // 3 + 4:
        raise InvalidRequest(
            f"the payload is {len(s)} base64 characters, more than the {max_bytes} bytes "
            f"allowed; send a smaller (e.g. JPEG or downscaled) image"
        )
    if "-" in s or "_" in s:  # URL-safe alphabet
        s = s.translate(str.maketrans("-_", "+/"))
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"the value is not valid base64 ({exc}); send the image file's bytes base64-encoded, "
            f"e.g. base64.b64encode(open('x.png', 'rb').read()).decode()"
        ) from None


def _payload_bytes(value: Any, max_bytes: int) -> bytes:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise InvalidRequest("the image is missing (null); send a base64-encoded PNG or JPEG string")
    if isinstance(value, str):
        return _b64decode(value, max_bytes)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        # ASCII bytes that look like base64 are base64; image files start with binary magic numbers
        if data and set(data[:4096]) <= _B64_CHARS or data[:5].lower() == b"data:":
            try:
                return _b64decode(data.decode("ascii"), max_bytes)
            except UnicodeDecodeError:
                pass
        if len(data) > max_bytes:
            raise InvalidRequest(f"the image file is {len(data)} bytes, more than the {max_bytes} allowed")
        return data
    raise InvalidRequest(f"expected a base64 string (or bytes) of a PNG/JPEG image, got {type(value).__name__}")


def _png_size(data: bytes) -> tuple[int, int] | tuple[None, None]:
    """(width, height) from a PNG's IHDR (PIL refuses zero-size PNGs as unidentified)."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None, None


@contextlib.contextmanager
def _opened(
    value: Any, max_pixels: int, max_bytes: int, on_size: Callable[[int, int], None] | None = None
) -> Iterator[Image.Image]:
    """The request value as a PIL image with its pixels loaded (see :func:`decode_image` for the checks).
    ``on_size(width, height)`` is called after the header is read, before any pixel is decoded (it may raise
    to refuse the image). The image is closed (its memory freed) when the block ends."""
    data = _payload_bytes(value, max_bytes)
    if not data:
        raise InvalidRequest("the image is empty (zero bytes); send the base64 encoding of a PNG or JPEG file")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(f"the image is too large ({exc}); downscale it to at most {max_pixels} pixels") from None
    except UnidentifiedImageError:
        w, h = _png_size(data)
        if w == 0 or h == 0:
            raise InvalidRequest(f"the image has zero size ({w}x{h}); send a non-empty image") from None
        raise InvalidRequest(
            f"the data ({len(data)} bytes, starting {data[:8]!r}) is not an image PIL can read "
            f"in the allowed formats {', '.join(ALLOWED_FORMATS)}; send a PNG or JPEG file, "
            f"base64-encoded"
        ) from None
    except Exception as exc:  # corrupt header: SyntaxError, OSError, ValueError, struct.error, ...
        raise InvalidRequest(
            f"the image header is corrupt ({type(exc).__name__}: {exc}); send a valid PNG or JPEG file"
        ) from None
    del data
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise InvalidRequest(f"the image has zero size ({w}x{h}); send a non-empty image")
        if w * h > max_pixels:
            raise InvalidRequest(
                f"the image is {w}x{h} = {w * h} pixels, more than the {max_pixels} allowed; "
                f"downscale it before sending"
            )
        if on_size is not None:
            on_size(w, h)
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise InvalidRequest(f"the image is too large ({exc}); downscale it") from None
        except Exception as exc:  # OSError("image file is truncated"), zlib errors, ...
            raise InvalidRequest(
                f"the {img.format} image ({w}x{h}) cannot be decoded, it is truncated or corrupt "
                f"({type(exc).__name__}: {exc}); send the complete file"
            ) from None
        yield img


def _rgb(img: Image.Image) -> np.ndarray:
    """:func:`pradot.data.read_image`'s EXIF orientation and conversions (grayscale, 16-bit, alpha) of a
    loaded image."""
    try:
        rgb = to_rgb_array(upright(img))
    except Exception as exc:  # noqa: BLE001 - a mode PIL loads but cannot convert
        raise InvalidRequest(
            f"the {img.format} image ({img.mode}) cannot be converted to RGB "
            f"({type(exc).__name__}: {exc}); send an 8-bit RGB PNG or JPEG"
        ) from None
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return rgb if rgb.flags.writeable else rgb.copy()


def decode_image(value: Any, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """A request value (base64 string, data URL or raw image bytes) -> (H, W, 3) uint8 RGB.

    The image's size is read from its header and checked against ``max_pixels`` before any pixel is
    decoded, so a huge image is refused at once. Raises :class:`InvalidRequest` for: no data, not
    base64, not an image (or a format outside :data:`ALLOWED_FORMATS`), zero width/height, more than
    ``max_pixels`` pixels (or a PIL decompression bomb), truncated or corrupt pixel data.
    """
    with _opened(value, max_pixels, max_bytes) as img:
        return _rgb(img)


def _resized(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``img`` as (h, w, 3) uint8 at ``size`` = (w, h), resized by PIL's bilinear filter (antialiased when
    shrinking) as training's ``ImageDataset`` does; an 8-bit RGB image is resized as decoded, without a
    full-size copy."""
    if img.mode == "RGB":
        return np.asarray(img if img.size == size else img.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
    rgb = _rgb(img)
    if rgb.shape[1::-1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
