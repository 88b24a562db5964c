"""Framework-free request handling for a served PRADOT model: decode, validate, score, encode maps.

The MLflow wrapper (``pipelines/mlflow_model.py``) is a thin shell around :class:`Scorer`; this module
imports neither MLflow nor pandas, so the same contract can be put behind any server.

```python
from pradot.serving import Calibration, Scorer, load_scoring_model
model = load_scoring_model("model.pt")                       # a PRADOT or ensemble file (pradot.persistence)
_, val_scores = model.score(validation_images)                # normal images held out from training
scorer = Scorer(model, Calibration.calibrate(val_scores, quantile=0.99))
scorer.predict([b64_png, b64_jpeg], return_map=True)
# -> [{"score": 0.31, "raw_score": 0.82, "is_anomaly": False, "threshold": 1.04,
#      "anomaly_map": "<base64 PNG, the input's size>"}, ...]
```

Contract of one request row (``Scorer.predict``):

* input: a base64 string (standard or URL-safe alphabet, padding optional, an optional
  ``data:image/...;base64,`` prefix) or the raw bytes of a PNG / JPEG / BMP / TIFF / WebP image.
  Grayscale, 16-bit, palette and RGBA images are converted to RGB as :func:`pradot.data.read_image`
  does (alpha composited on black), then resized to the model's ``image_size`` with PIL's bilinear
  filter (as training's ``ImageDataset`` does).
* output: ``score`` (the raw score normalised by the :class:`Calibration`: 0.5 at the threshold,
  clipped to [0, 1]), ``raw_score`` (the model's image score, max of its anomaly map),
  ``is_anomaly`` (``raw_score > threshold``) and ``threshold`` (the raw-score threshold); with
  ``return_map``: ``anomaly_map``, a base64 PNG heat map over the input at the input's size (colour
  scale: the calibrated score range, so the map's middle colour is the threshold), or with
  ``map_format="npy"`` a base64 ``.npy`` of the raw float32 map at the input's size. A map is at most
  ``max_map_side`` pixels on its longer side (default 1024): a larger input gets its map scaled down,
  aspect ratio kept. With ``return_mask``: ``mask``, a base64 PNG (8-bit grayscale, 255 = defect) of
  ``map > mask_threshold`` at the returned map's size (the same float32 map ``map_format="npy"`` returns),
  and ``mask_threshold``, the pixel threshold that made it.
* operating point (:meth:`pradot.calibration.Calibration.operating_point`): by default the calibrated
  thresholds (image: ``threshold``; masks: the calibration's pixel threshold); ``quantile`` q picks the
  q-quantile of the normals' image scores and of their pixel scores from the stored table (q in
  [0.5, 1]); ``threshold`` t (a raw score) is used for images and masks alike. ``threshold`` in the answer
  is the one used, and ``score`` is 0.5 at it.
* ``online_update`` (few-shot FOCT models only; off by default): after scoring, each image of the request
  whose raw score is at most the calibrated threshold (not the request's operating point) calibrates the
  model's online episodic memory with its most normal-looking features (FOCT Eq. 6/7); images above it change
  nothing. The memory is state of this process's model (see README "Few-shot inspection"); other models
  refuse the parameter.
* errors: :class:`InvalidRequest` (a ``ValueError``) naming each bad row and saying how to fix it.

Budgets (each a :class:`Scorer` argument, the served model's ``model_config``): one image at most
``max_pixels`` pixels and ``max_bytes`` bytes; a request at most ``max_rows`` rows, ``max_request_pixels``
decoded pixels over all its rows and ``max_response_bytes`` bytes of returned maps (counted from the
images' headers before their pixels are decoded: the ``.npy`` size, or 3 bytes a pixel for a PNG map).
Over a request budget: :class:`RequestTooLarge` (HTTP 413 when served). At most ``max_in_flight``
requests are decoded and scored at once per process; a request waits up to ``wait_s`` seconds for its
turn, then :class:`ServerBusy` (HTTP 503). Only one image of a request is decoded at full size at a time
(each row keeps its model-size tensor and, for a PNG map, its image at the map's size), so a request's
memory is bounded by one decoded image plus its returned maps.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .calibration import Calibration, OperatingPoint
from .data.base import upright
from .data.images import to_rgb_array
from .persistence import ScoringModel, load_scoring_model, model_file_info, servable_formats

__all__ = [
    "ALLOWED_FORMATS",
    "MAP_FORMATS",
    "Calibration",
    "InvalidRequest",
    "RequestTooLarge",
    "Scorer",
    "ServerBusy",
    "ScoringModel",
    "decode_image",
    "encode_mask",
    "encode_png",
    "load_scoring_model",
    "map_size",
    "resize_map",
    "model_file_info",
    "return_large_blocks",
    "servable_formats",
]

#: image container formats a request may use (PIL's names); others (EPS, PDF, ...) are refused
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: formats of the returned anomaly map
MAP_FORMATS = ("png", "npy")
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: decoded pixels over all rows of one request (four images at the per-image limit)
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
#: the longer side of a returned map (larger inputs get their map scaled down)
DEFAULT_MAX_MAP_SIDE = 1024
#: bytes of returned maps in one answer (e.g. five 1024 x 1024 ``.npy`` maps, or ten PNG ones)
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: requests decoded and scored at once per process, and how long a request waits for its turn (seconds)
DEFAULT_MAX_IN_FLIGHT = 1
DEFAULT_WAIT_S = 30.0
#: allocations from this size up are given back to the OS when freed (:func:`return_large_blocks`)
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
EXPECTED_PAYLOAD = (
    '{"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]}, "params": {"return_map": false}}'
)


class InvalidRequest(ValueError):
    """A client error: the message says what was wrong and how to fix it (HTTP 400 when served)."""


class RequestTooLarge(InvalidRequest):
    """A request over one of its budgets (rows, decoded pixels, returned bytes); the message names the
    limit and how to fit in it (HTTP 413 when served)."""


class ServerBusy(RuntimeError):
    """The process scores ``max_in_flight`` requests already and this one waited ``wait_s`` seconds for its
    turn: not the client's error, retry later (HTTP 503 when served)."""


# ---------------------------------------------------------------------------------------- decoding
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
        return np.asarray(img if img.size == size else img.resize(size, Image.BILINEAR), dtype=np.uint8)
    rgb = _rgb(img)
    if rgb.shape[1::-1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.uint8)


def encode_png(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 (standard alphabet, no data-URL prefix) of a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_mask(mask: np.ndarray) -> str:
    """(H, W) bool -> base64 of an 8-bit grayscale PNG, 255 where True."""
    buf = io.BytesIO()
    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(
        buf, format="PNG", compress_level=3
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def resize_map(amap, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) anomaly map at ``size`` = (H, W) as float32: bilinear (``align_corners=False``), antialiased
    when shrinking (the maps and masks a served model returns)."""
    h, w = int(size[0]), int(size[1])
    m = torch.as_tensor(amap).float()[None, None]
    if (h, w) != tuple(m.shape[-2:]):
        m = F.interpolate(
            m, size=(h, w), mode="bilinear", align_corners=False, antialias=h < m.shape[-2] or w < m.shape[-1]
        )
    return m[0, 0].cpu().numpy()


def _encode_npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def return_large_blocks(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Make the C allocator (glibc) serve allocations of ``threshold`` bytes and more with ``mmap``, so they go
    back to the OS when freed. By default glibc raises that threshold up to 32 MiB as large blocks are freed,
    and a server's request threads then keep decoded images in their own heaps: measured on 6 threads
    scoring 25 MP images, +615 MB resident at the peak and +375 MB after, against +190 MB and +50 MB with a
    4 MiB threshold. Process-wide; a server calls it once at start. Returns False where it is not available
    (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt(m_mmap_threshold, int(threshold)))


# ----------------------------------------------------------------------------------------- scoring
@dataclass
class _Row:
    size: tuple[int, int]  # original (H, W)
    tensor: torch.Tensor  # (3, S, S) float in [0, 1]
    rgb: np.ndarray | None  # the image at its map's size, kept only for PNG map overlays


def map_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """The (height, width) of a returned map: the input's, scaled down (aspect kept) so that its longer side
    is at most ``max_side``."""
    scale = min(1.0, max_side / max(h, w))
    return (max(1, round(h * scale)), max(1, round(w * scale))) if scale < 1.0 else (h, w)


def _map_bytes(h: int, w: int, map_format: str) -> int:
    """Upper bound of one returned map's base64 size: the ``.npy`` (float32 + header), or 3 bytes a pixel
    (an uncompressed RGB PNG) for a PNG map."""
    raw = h * w * 4 + 128 if map_format == "npy" else h * w * 3 + 1024
    return 4 * ((raw + 2) // 3)


def _mask_bytes(h: int, w: int) -> int:
    """Upper bound of one returned mask's base64 size: an uncompressed 8-bit grayscale PNG."""
    return 4 * ((h * w + h + 1024 + 2) // 3)


class _Budget:
    """A request's budgets, charged as each row's header is read (before its pixels are decoded)."""

    def __init__(self, scorer: Scorer, map_format: str | None, masks: bool = False):
        self.scorer, self.map_format, self.masks = scorer, map_format, masks
        self.pixels = self.bytes = 0

    def charge(self, w: int, h: int) -> None:
        sc = self.scorer
        self.pixels += w * h
        if self.pixels > sc.max_request_pixels:
            raise RequestTooLarge(
                f"the request's images hold more than the {sc.max_request_pixels} decoded pixels "
                f"allowed per request (max_request_pixels; this row brings the total to "
                f"{self.pixels}); send fewer or smaller images per request"
            )
        if self.map_format is not None or self.masks:
            mh, mw = map_size(h, w, sc.max_map_side)
            self.bytes += _map_bytes(mh, mw, self.map_format) if self.map_format is not None else 0
            self.bytes += _mask_bytes(mh, mw) if self.masks else 0
            if self.bytes > sc.max_response_bytes:
                other = " or PNG maps (3 bytes a pixel, not 4)" if self.map_format == "npy" else ""
                raise RequestTooLarge(
                    f"the maps asked for would exceed the {sc.max_response_bytes} bytes of maps allowed per answer "
                    f"(max_response_bytes; {self.bytes} bytes with this row, map_format={self.map_format!r}, maps "
                    f"at most {sc.max_map_side} px a side); ask for the maps of fewer or smaller images per "
                    f"request{other}"
                )


class Scorer:
    """Scores request rows with a model (anything with ``score`` and ``config.image_size``) and a
    :class:`Calibration`. See the module docstring for the row contract and the budgets.

    Raises:
        ValueError: a budget that is not a positive number.
    """

    def __init__(
        self,
        model: ScoringModel,
        calibration: Calibration,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_rows: int = 256,
        map_alpha: float = 0.5,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_map_side: int = DEFAULT_MAX_MAP_SIDE,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        wait_s: float = DEFAULT_WAIT_S,
    ):
        size = int(model.config.image_size)
        if size < 1:
            raise ValueError(f"model image_size must be positive, got {size}")
        self.model = model
        self.calibration = calibration
        self.image_size = size
        self.batch_size = int(batch_size)
        self.max_pixels = int(max_pixels)
        self.max_rows = int(max_rows)
        self.map_alpha = float(map_alpha)
        self.max_request_pixels = int(max_request_pixels)
        self.max_map_side = int(max_map_side)
        self.max_response_bytes = int(max_response_bytes)
        self.max_in_flight = int(max_in_flight)
        self.wait_s = float(wait_s)
        budgets = {
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "max_rows": self.max_rows,
            "max_request_pixels": self.max_request_pixels,
            "max_map_side": self.max_map_side,
            "max_response_bytes": self.max_response_bytes,
            "max_in_flight": self.max_in_flight,
        }
        bad = {k: v for k, v in budgets.items() if v < 1}
        if bad or not (self.wait_s >= 0):
            raise ValueError(f"serving budgets must be >= 1 (wait_s >= 0), got {bad or {'wait_s': wait_s}}")
        self._slots = threading.BoundedSemaphore(self.max_in_flight)

    def _row(self, img: Image.Image, keep_image: bool) -> _Row:
        img = upright(img)  # EXIF orientation (a transposed copy only when the image has one)
        S, (w, h) = self.image_size, img.size
        tensor = torch.from_numpy(_resized(img, (S, S)).copy()).permute(2, 0, 1).float().div_(255.0)
        mh, mw = map_size(h, w, self.max_map_side)
        return _Row((h, w), tensor, _resized(img, (mw, mh)) if keep_image else None)

    def validate(
        self, images: Iterable[Any], keep_images: bool = False, map_format: str | None = None, masks: bool = False
    ) -> list[_Row]:
        """Decode every row (one at a time) within the request's budgets; one :class:`InvalidRequest` listing
        all bad rows (by index), or :class:`RequestTooLarge` as soon as a budget is exceeded.

        ``keep_images``: keep each image at its map's size (for PNG overlays); ``map_format``: the maps asked
        for (charged to ``max_response_bytes``), None for none; ``masks``: masks asked for (charged too)."""
        values = list(images)
        if not values:
            raise InvalidRequest(f"the request has no images; expected payload: {EXPECTED_PAYLOAD}")
        if len(values) > self.max_rows:
            raise RequestTooLarge(
                f"the request has {len(values)} images, more than the {self.max_rows} allowed "
                f"per request (max_rows); split it into several requests"
            )
        budget = _Budget(self, map_format, masks)
        rows: list[_Row] = []
        errors: list[str] = []
        for i, v in enumerate(values):
            try:
                with _opened(v, self.max_pixels, DEFAULT_MAX_BYTES, on_size=budget.charge) as img:
                    rows.append(self._row(img, keep_images))
            except RequestTooLarge as exc:
                raise RequestTooLarge(f"row {i}: {exc}") from None
            except InvalidRequest as exc:
                errors.append(f"row {i}: {exc}")
        if errors:
            more = f" (and {len(errors) - 10} more bad rows)" if len(errors) > 10 else ""
            raise InvalidRequest(f"{len(errors)} of {len(values)} images are invalid: " + "; ".join(errors[:10]) + more)
        return rows

    def _map_at_size(self, amap: torch.Tensor, row: _Row) -> np.ndarray:
        """The row's map at its map size (:func:`resize_map`)."""
        return resize_map(amap, map_size(*row.size, self.max_map_side))

    def _anomaly_map(self, m: np.ndarray, row: _Row, map_format: str, threshold: float) -> str:
        """A map at its returned size, encoded: ``.npy``, or a PNG heat map over the image (colour scale centred
        on ``threshold``)."""
        if map_format == "npy":
            return _encode_npy(m)
        from .viz import heatmap_rgb  # matplotlib; imported on the first map request

        vmin, vmax = self.calibration.raw_range(threshold)
        return encode_png(heatmap_rgb(m, vmin, vmax, image=row.rgb, alpha=self.map_alpha))

    def operating_point(self, quantile=None, threshold=None) -> OperatingPoint:
        """The request's thresholds (:meth:`Calibration.operating_point`); InvalidRequest when they are bad."""
        try:
            return self.calibration.operating_point(quantile=quantile, threshold=threshold)
        except ValueError as exc:
            raise InvalidRequest(f"bad operating point: {exc}") from None

    def predict(
        self,
        images: Sequence[Any],
        return_map: bool = False,
        map_format: str = "png",
        return_mask: bool = False,
        quantile: float | None = None,
        threshold: float | None = None,
        online_update: bool = False,
    ) -> list[dict]:
        """Score request rows -> one dict per row (see the module docstring). Validates the parameters and all
        rows first.

        Raises:
            InvalidRequest: a bad row or parameter; RequestTooLarge: over a request budget.
            ServerBusy: ``max_in_flight`` requests are being scored and this one waited ``wait_s`` seconds.
        """
        for name, flag in (("return_map", return_map), ("return_mask", return_mask), ("online_update", online_update)):
            if not isinstance(flag, (bool, np.bool_)):
                raise InvalidRequest(f"{name} must be true or false, got {flag!r}")
        if online_update and not getattr(self.model, "online_memory", False):
            raise InvalidRequest(
                "online_update=true needs a few-shot (FOCT) model with an online memory; this "
                f"model ({type(self.model).__name__}) has none: send online_update=false"
            )
        map_format = str(map_format).lower()
        if map_format not in MAP_FORMATS:
            raise InvalidRequest(f"map_format must be one of {list(MAP_FORMATS)}, got {map_format!r}")
        op = self.operating_point(quantile, threshold)
        if not self._slots.acquire(timeout=self.wait_s):
            raise ServerBusy(
                f"the server is scoring {self.max_in_flight} request(s) already (max_in_flight) and "
                f"this one waited {self.wait_s:g} s (wait_s) for its turn; retry later"
            )
        try:
            return self._predict(images, bool(return_map), map_format, bool(return_mask), op, bool(online_update))
        finally:
            self._slots.release()

    def _predict(
        self,
        images: Sequence[Any],
        return_map: bool,
        map_format: str,
        return_mask: bool,
        op: OperatingPoint,
        online_update: bool = False,
    ) -> list[dict]:
        rows = self.validate(
            images,
            keep_images=return_map and map_format == "png",
            map_format=map_format if return_map else None,
            masks=return_mask,
        )
        cal = self.calibration
        out: list[dict] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            with torch.no_grad():
                x = torch.stack([r.tensor for r in batch])
                maps, scores = (
                    self.model.score(x, update=True, update_below=cal.threshold)
                    if online_update
                    else self.model.score(x)
                )
            scores = torch.as_tensor(scores).detach().float().cpu().numpy().reshape(-1)
            for j, row in enumerate(batch):
                raw = float(scores[j])
                rec = {
                    "score": float(cal.normalise(raw, op.threshold)),
                    "raw_score": raw,
                    "is_anomaly": bool(raw > op.threshold),
                    "threshold": op.threshold,
                }
                if return_map or return_mask:
                    m = self._map_at_size(torch.as_tensor(maps[j]).detach(), row)
                    if return_map:
                        rec["anomaly_map"] = self._anomaly_map(m, row, map_format, op.threshold)
                        row.rgb = None  # drawn: the overlay image is not needed any more
                    if return_mask:
                        rec["mask"] = encode_mask(m > op.mask_threshold)
                        rec["mask_threshold"] = op.mask_threshold
                out.append(rec)
        return out
