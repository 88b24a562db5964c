"""Framework-free request handling for a served PRADOT model: decode, validate, score, encode maps.

The MLflow wrapper (``pipelines/mlflow_model.py``) is a thin shell around :class:`Scorer`; this module
imports neither MLflow nor pandas, so the same contract can be put behind any server.

```python
from pradot.serving import Calibration, Scorer, load_scoring_model
model = load_scoring_model("model.pt")                       # a PRADOT file (ensembles: see below)
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
  ``map_format="npy"`` a base64 ``.npy`` of the raw float32 map at the input's size.
* errors: :class:`InvalidRequest` (a ``ValueError``) naming each bad row and saying how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ALLOWED_FORMATS",
    "MAP_FORMATS",
    "Calibration",
    "InvalidRequest",
    "Scorer",
    "ScoringModel",
    "decode_image",
    "encode_png",
    "load_scoring_model",
    "model_file_format",
    "model_file_info",
    "register_loader",
    "servable_formats",
]

#: image container formats a request may use (PIL's names); others (EPS, PDF, ...) are refused
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: formats of the returned anomaly map
MAP_FORMATS = ("png", "npy")
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
EXPECTED_PAYLOAD = ('{"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]}, '
                    '"params": {"return_map": false}}')


class InvalidRequest(ValueError):
    """A client error: the message says what was wrong and how to fix it (HTTP 400 when served)."""


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
        raise InvalidRequest(f"the payload is {len(s)} base64 characters, more than the {max_bytes} bytes "
                             f"allowed; send a smaller (e.g. JPEG or downscaled) image")
    if "-" in s or "_" in s:  # URL-safe alphabet
        s = s.translate(str.maketrans("-_", "+/"))
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"the value is not valid base64 ({exc}); send the image file's bytes base64-encoded, "
                             f"e.g. base64.b64encode(open('x.png', 'rb').read()).decode()") from None


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


def decode_image(value: Any, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """A request value (base64 string, data URL or raw image bytes) -> (H, W, 3) uint8 RGB.

    The image's size is read from its header and checked against ``max_pixels`` before any pixel is
    decoded, so a huge image is refused at once. Raises :class:`InvalidRequest` for: no data, not
    base64, not an image (or a format outside :data:`ALLOWED_FORMATS`), zero width/height, more than
    ``max_pixels`` pixels (or a PIL decompression bomb), truncated or corrupt pixel data.
    """
    from .data.images import _to_rgb_array  # read_image's conversions (grayscale, 16-bit, alpha, ...)

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
        raise InvalidRequest(f"the data ({len(data)} bytes, starting {data[:8]!r}) is not an image PIL can read "
                             f"in the allowed formats {', '.join(ALLOWED_FORMATS)}; send a PNG or JPEG file, "
                             f"base64-encoded") from None
    except Exception as exc:  # corrupt header: SyntaxError, OSError, ValueError, struct.error, ...
        raise InvalidRequest(f"the image header is corrupt ({type(exc).__name__}: {exc}); send a valid PNG or "
                             f"JPEG file") from None
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise InvalidRequest(f"the image has zero size ({w}x{h}); send a non-empty image")
        if w * h > max_pixels:
            raise InvalidRequest(f"the image is {w}x{h} = {w * h} pixels, more than the {max_pixels} allowed; "
                                 f"downscale it before sending")
        try:
            img.load()
            rgb = _to_rgb_array(img)
        except Image.DecompressionBombError as exc:
            raise InvalidRequest(f"the image is too large ({exc}); downscale it") from None
        except Exception as exc:  # OSError("image file is truncated"), zlib errors, ...
            raise InvalidRequest(f"the {img.format} image ({w}x{h}) cannot be decoded, it is truncated or corrupt "
                                 f"({type(exc).__name__}: {exc}); send the complete file") from None
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return rgb if rgb.flags.writeable else rgb.copy()


def encode_png(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 (standard alphabet, no data-URL prefix) of a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _encode_npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------ calibration
@dataclass
class Calibration:
    """Maps raw image scores to [0, 1]: 0.5 at ``threshold`` (a quantile of normal validation scores),
    slope ``1 / (high - low)`` (the normal scores' range), clipped."""

    threshold: float
    low: float
    high: float
    quantile: float
    n_images: int

    def __post_init__(self):
        self.threshold, self.low, self.high = float(self.threshold), float(self.low), float(self.high)
        self.quantile, self.n_images = float(self.quantile), int(self.n_images)
        if not all(math.isfinite(v) for v in (self.threshold, self.low, self.high)):
            raise ValueError(f"calibration values must be finite, got {self}")
        if self.high < self.low:
            raise ValueError(f"calibration high {self.high} < low {self.low}")

    @classmethod
    def calibrate(cls, validation_scores, quantile: float = 0.99) -> "Calibration":
        """From the image scores of normal validation images (not seen in training)."""
        if isinstance(validation_scores, torch.Tensor):
            validation_scores = validation_scores.detach().cpu().numpy()
        s = np.asarray(validation_scores, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError("calibration needs at least one validation score")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"validation scores contain {int((~np.isfinite(s)).sum())} non-finite values")
        if not 0.0 <= float(quantile) <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
        return cls(threshold=float(np.quantile(s, quantile)), low=float(s.min()), high=float(s.max()),
                   quantile=float(quantile), n_images=int(s.size))

    @property
    def span(self) -> float:
        """``high - low``, or a tiny positive number when all validation scores were equal."""
        return max(self.high - self.low, 1e-9 * max(1.0, abs(self.threshold)))

    def normalise(self, raw):
        """Raw score(s) -> [0, 1]; 0.5 at the threshold. A float for a scalar, else an array."""
        out = np.clip(0.5 + (np.asarray(raw, dtype=np.float64) - self.threshold) / self.span, 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def raw_range(self) -> tuple[float, float]:
        """The raw values that normalise to 0 and 1 (the heat map's colour scale)."""
        return self.threshold - 0.5 * self.span, self.threshold + 0.5 * self.span

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        missing = [k for k in ("threshold", "low", "high", "quantile", "n_images") if k not in d]
        if missing:
            raise ValueError(f"calibration is missing {missing} (have {sorted(d)})")
        return cls(**{k: d[k] for k in ("threshold", "low", "high", "quantile", "n_images")})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------- model loading
class ScoringModel(Protocol):
    """What :class:`Scorer` needs: PRADOT has it; an ensemble must too."""

    config: Any  # with .image_size (int)

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _load_pradot(path: Path, device: str) -> ScoringModel:
    from .model import PRADOT

    model = PRADOT.load(path, device=device)
    model.eval()
    return model


#: model file format (the ``"format"`` entry of the saved dict) -> loader(path, device). This is the
#: dispatch point for serving other scorers with the same contract: a scorer saved as one torch file
#: with its own ``"format"`` string registers its loader here (:func:`register_loader`), and
#: :func:`load_scoring_model` (hence the MLflow wrapper) serves it unchanged. The object returned must
#: have ``score(images (B,3,S,S) float [0,1]) -> (maps (B,S,S), scores (B,))`` and ``config.image_size``.
#: ``pradot.ensemble`` registers ``"pradot-ensemble-v1"`` when imported (:func:`servable_formats` does).
LOADERS: dict[str, Callable[[Path, str], ScoringModel]] = {"pradot-model-v1": _load_pradot}


def register_loader(file_format: str, loader: Callable[[Path, str], ScoringModel]) -> None:
    LOADERS[file_format] = loader


def servable_formats() -> list[str]:
    """The registered formats, after importing the modules that register theirs (ensembles)."""
    try:
        from . import ensemble  # noqa: F401  (registers its loader on import)
    except ImportError:
        pass
    return sorted(LOADERS)


def model_file_info(path: str | Path) -> dict[str, Any]:
    """``{"format": ..., "config": ...}`` of a saved model file (memory-mapped: tensors are not read)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # old (non-zip) torch files cannot be memory-mapped
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ValueError(f"{path} is not a torch model file: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        return {"format": None, "config": None}
    return {"format": state.get("format"), "config": state.get("config")}


def model_file_format(path: str | Path) -> str | None:
    """The ``"format"`` string of a saved model file (the :data:`LOADERS` key)."""
    return model_file_info(path)["format"]


def _resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_scoring_model(path: str | Path, device: str | None = "cpu") -> ScoringModel:
    """Load whatever scorer ``path`` holds, dispatching on its format (see :data:`LOADERS`).

    ``device``: ``"cpu"``, ``"cuda"``, ... or ``"auto"`` (CUDA when available).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; a scoring model is one file (a PRADOT .pt, or a format "
                         f"registered with pradot.serving.register_loader: {servable_formats()})")
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    fmt = model_file_format(path)
    formats = servable_formats()
    if fmt not in LOADERS:
        raise ValueError(f"{path} has model format {fmt!r}; servable formats: {formats}")
    return LOADERS[fmt](path, _resolve_device(device))


# ----------------------------------------------------------------------------------------- scoring
@dataclass
class _Row:
    size: tuple[int, int]  # original (H, W)
    tensor: torch.Tensor  # (3, S, S) float in [0, 1]
    rgb: np.ndarray | None  # original image, kept only for map overlays


class Scorer:
    """Scores request rows with a model (anything with ``score`` and ``config.image_size``) and a
    :class:`Calibration`. See the module docstring for the row contract."""

    def __init__(self, model: ScoringModel, calibration: Calibration, batch_size: int = 8,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_rows: int = 256, map_alpha: float = 0.5):
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

    def _prepare(self, rgb: np.ndarray) -> torch.Tensor:
        S = self.image_size
        if rgb.shape[:2] != (S, S):  # PIL bilinear (antialiased when shrinking), as in training
            rgb = np.array(Image.fromarray(rgb).resize((S, S), Image.BILINEAR), dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)

    def validate(self, images: Iterable[Any], keep_images: bool = False) -> list[_Row]:
        """Decode every row; one :class:`InvalidRequest` listing all bad rows (by index)."""
        values = list(images)
        if not values:
            raise InvalidRequest(f"the request has no images; expected payload: {EXPECTED_PAYLOAD}")
        if len(values) > self.max_rows:
            raise InvalidRequest(f"the request has {len(values)} images, more than the {self.max_rows} allowed "
                                 f"per request; split it into several requests")
        rows: list[_Row] = []
        errors: list[str] = []
        for i, v in enumerate(values):
            try:
                rgb = decode_image(v, max_pixels=self.max_pixels)
            except InvalidRequest as exc:
                errors.append(f"row {i}: {exc}")
                continue
            rows.append(_Row(rgb.shape[:2], self._prepare(rgb), rgb if keep_images else None))
        if errors:
            more = f" (and {len(errors) - 10} more bad rows)" if len(errors) > 10 else ""
            raise InvalidRequest(f"{len(errors)} of {len(values)} images are invalid: " + "; ".join(errors[:10]) + more)
        return rows

    def _anomaly_map(self, amap: torch.Tensor, row: _Row, map_format: str) -> str:
        h, w = row.size
        m = amap.float()[None, None]
        if (h, w) != tuple(m.shape[-2:]):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=h < m.shape[-2] or w < m.shape[-1])
        m = m[0, 0].cpu().numpy()
        if map_format == "npy":
            return _encode_npy(m)
        from .viz import heatmap_rgb  # matplotlib; imported on the first map request

        vmin, vmax = self.calibration.raw_range()
        return encode_png(heatmap_rgb(m, vmin, vmax, image=row.rgb, alpha=self.map_alpha))

    def predict(self, images: Sequence[Any], return_map: bool = False, map_format: str = "png") -> list[dict]:
        """Score request rows -> one dict per row (see the module docstring). Validates all rows first."""
        if not isinstance(return_map, (bool, np.bool_)):
            raise InvalidRequest(f"return_map must be true or false, got {return_map!r}")
        map_format = str(map_format).lower()
        if map_format not in MAP_FORMATS:
            raise InvalidRequest(f"map_format must be one of {list(MAP_FORMATS)}, got {map_format!r}")
        rows = self.validate(images, keep_images=bool(return_map) and map_format == "png")
        cal = self.calibration
        out: list[dict] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            with torch.no_grad():
                maps, scores = self.model.score(torch.stack([r.tensor for r in batch]))
            scores = torch.as_tensor(scores).detach().float().cpu().numpy().reshape(-1)
            for j, row in enumerate(batch):
                raw = float(scores[j])
                rec = {"score": float(cal.normalise(raw)), "raw_score": raw, "is_anomaly": bool(raw > cal.threshold),
                       "threshold": cal.threshold}
                if return_map:
                    rec["anomaly_map"] = self._anomaly_map(torch.as_tensor(maps[j]).detach(), row, map_format)
                out.append(rec)
        return out
