"""The :class:`Scorer`: a model and its calibration behind the request contract of :mod:`pradot.serving`."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..calibration import Calibration, OperatingPoint
from ..data.base import upright
from ..persistence import ScoringModel
from ..viz.heatmap import annotate_overlay, heatmap_rgb
from .budget import (
    BUDGET_NAMES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MAP_SIDE,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_WAIT_S,
    _Budget,
)
from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, _opened, _resized
from .encode import MAP_FORMATS, _encode_npy, encode_mask, encode_png, map_size, resize_map
from .errors import EXPECTED_PAYLOAD, InvalidRequest, RequestTooLarge, ServerBusy

__all__ = ["Scorer"]


@dataclass
class _Row:
    size: tuple[int, int]  # original (H, W)
    tensor: torch.Tensor  # (3, S, S) float in [0, 1]
    rgb: np.ndarray | None  # the image at its map's size, kept only for PNG map overlays


def overlay_label(score: float, is_anomaly: bool) -> str:
    """The text drawn on an overlay: the normalised score and the decision at the request's threshold."""
    return f"score {score:.3f} {'ANOMALY' if is_anomaly else 'normal'}"


class Scorer:
    """Scores request rows with a model (anything with ``score`` and ``config.image_size``) and a
    :class:`Calibration`. See :mod:`pradot.serving` for the row contract and the budgets.

    The budgets are constructor arguments (:data:`~pradot.serving.budget.BUDGET_NAMES`); :meth:`with_budgets`
    gives a scorer of the same model and calibration with other budgets.

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

    @property
    def budgets(self) -> dict[str, Any]:
        """This scorer's budgets, by constructor argument name (:data:`~pradot.serving.budget.BUDGET_NAMES`)."""
        return {name: getattr(self, name) for name in BUDGET_NAMES}

    def with_budgets(self, **changes: int | float) -> Scorer:
        """A new scorer of the same model and calibration (and heat-map blend), with the budgets in ``changes``
        and this scorer's others. Its requests in flight are counted apart from this scorer's.

        Raises:
            ValueError: a name that is not a budget, or a budget that is not a positive number.
        """
        unknown = sorted(set(changes) - set(BUDGET_NAMES))
        if unknown:
            raise ValueError(f"not serving budgets: {unknown}; the budgets are {list(BUDGET_NAMES)}")
        return Scorer(self.model, self.calibration, map_alpha=self.map_alpha, **{**self.budgets, **changes})

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

    def _anomaly_map(self, m: np.ndarray, row: _Row, map_format: str, threshold: float, label: str) -> str:
        """A map at its returned size, encoded: ``.npy``; a PNG heat map (``heatmap``); or the heat map over the
        image with its colour bar, the threshold's tick and ``label`` (``overlay``, ``png``). The colour scale is
        centred on ``threshold``."""
        if map_format == "npy":
            return _encode_npy(m)
        vmin, vmax = self.calibration.raw_range(threshold)
        if map_format == "heatmap":
            return encode_png(heatmap_rgb(m, vmin, vmax))
        rgb = heatmap_rgb(m, vmin, vmax, image=row.rgb, alpha=self.map_alpha)
        return encode_png(annotate_overlay(rgb, vmin, vmax, threshold, label))

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
        """Score request rows -> one dict per row (see :mod:`pradot.serving`). Validates the parameters and all
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
            keep_images=return_map and map_format in ("png", "overlay"),
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
                        label = overlay_label(rec["score"], rec["is_anomaly"])
                        rec["anomaly_map"] = self._anomaly_map(m, row, map_format, op.threshold, label)
                        row.rgb = None  # drawn: the overlay image is not needed any more
                    if return_mask:
                        rec["mask"] = encode_mask(m > op.mask_threshold)
                        rec["mask_threshold"] = op.mask_threshold
                out.append(rec)
        return out
