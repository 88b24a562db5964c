"""What ``predict`` does with one batch of images wherever it runs (in the ``predict`` process, or in a Ray
actor with ``ray=true``): read each file, score the readable ones through the pyfunc as a request to
``mlflow models serve`` would, and render each image's outputs as bytes (the map as a float32 TIFF, the mask
and the overlay as PNG); and how the driver puts those bytes in the output folder (each file written
atomically, :func:`pradot.io.atomic_write`: an interrupted run leaves no half-written file).

Both paths share these functions, so their files are the same bytes for the same maps.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "KINDS",
    "BatchSettings",
    "Scored",
    "output_rel",
    "open_model",
    "read_payload",
    "file_wording",
    "predict_records",
    "render",
    "score_batch",
    "write_outputs",
]

#: the files written per image: kind -> (folder, extension)
KINDS = {"map": ("maps", ".tiff"), "mask": ("masks", ".png"), "overlay": ("overlays", ".png")}


class BatchSettings(Protocol):
    """What scoring a batch reads of predict's settings (:class:`pipelines.predict.PredictSettings`)."""

    batch_size: int
    max_map_side: int
    write_maps: bool
    write_masks: bool
    write_overlays: bool

    @property
    def params(self) -> dict[str, Any]: ...


def open_model(uri: str, settings: BatchSettings, device: str):
    """The installed pyfunc over the model at ``uri`` (:func:`pipelines.trusted.load_pyfunc`) on ``device``,
    its scorer rebuilt with predict's budgets (maps at the input's size up to ``max_map_side``; a batch's maps
    and masks within the response budget): ``(model, scorer)``. Used by the driver and by each Ray actor.

    Raises:
        MlflowException, OSError, UntrustedModel: the model cannot be loaded (see ``load_pyfunc``).
    """
    from pipelines.trusted import load_pyfunc
    from pradot.serving import batch_budgets

    model = load_pyfunc(uri, model_config={"device": device})
    served = model.unwrap_python_model()
    # predict's budgets, as constructor arguments of a new Scorer (a logged model_config only lets MLflow
    # override the keys it was logged with)
    budgets = batch_budgets(served.scorer.budgets, settings.batch_size, settings.max_map_side)
    served.scorer = scorer = served.scorer.with_budgets(**budgets)
    return model, scorer


def output_rel(kind: str, stem: str) -> str:
    """The path of an image's ``kind`` file under the output folder (``stem``: its path under the input root,
    without extension)."""
    folder, ext = KINDS[kind]
    return f"{folder}/{stem}{ext}"


@dataclass(frozen=True)
class Scored:
    """One scored image: the scores.csv values and the bytes of each file to write (``kind`` -> content,
    only the kinds asked for)."""

    score: float
    raw_score: float
    is_anomaly: bool
    threshold: float
    mask_threshold: float
    files: Mapping[str, bytes] = field(default_factory=dict)

    def row(self, path_cell: str, written: Mapping[str, str]) -> tuple:
        """The scores.csv row (``written``: the cell of each file written, by kind)."""
        return (
            path_cell,
            self.score,
            self.raw_score,
            self.is_anomaly,
            self.threshold,
            self.mask_threshold,
            *(written.get(k, "") for k in KINDS),
        )


def read_payload(f: Path) -> tuple[str | None, str | None]:
    """``(base64 file bytes, None)`` or ``(None, the reason it cannot be read)``."""
    try:
        return base64.b64encode(f.read_bytes()).decode("ascii"), None
    except OSError as exc:
        return None, f"cannot read the file ({type(exc).__name__}: {exc})"


def file_wording(reason: str) -> str:
    """The server's reason for a bad request row, told about a file: its advice on what to send (e.g. a
    base64-encoded PNG or JPEG) becomes what to do with the file."""
    return re.sub(r"; send [^;]*$", "; re-save the file as PNG or JPEG, or remove it from the input", reason)


def predict_records(model, payloads: list[str], params: dict) -> list[dict | str]:
    """One record per payload, or the reason it failed: a batch with bad rows is scored again row by row.

    Raises:
        MlflowException: a failure of the model other than a bad request (HTTP 400 / 413).
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(pd.DataFrame({"image": payloads}), params=params).to_dict("records")
    except MlflowException as exc:
        if exc.get_http_status_code() not in (400, 413):
            raise
        if len(payloads) == 1:
            return [file_wording(re.sub(r"^1 of 1 images are invalid: row 0: ", "", exc.message))]
    return [r for p in payloads for r in predict_records(model, [p], params)]


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def render(rec: dict, payload: str, settings: BatchSettings, calibration) -> Scored:
    """A pyfunc record (``return_map`` as ``.npy``, ``return_mask``) as a :class:`Scored`: the raw map as a
    float32 TIFF, the mask PNG as the pyfunc encoded it, the overlay (the heat map over the image resized
    bilinearly to the map, annotated as the server's ``map_format=overlay``) as a PNG."""
    import numpy as np
    import tifffile
    from PIL import Image

    from pradot.serving import decode_image
    from pradot.serving.scorer import overlay_label
    from pradot.viz import annotate_overlay, heatmap_rgb

    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    files: dict[str, bytes] = {}
    if settings.write_maps:
        buf = io.BytesIO()
        tifffile.imwrite(buf, amap.astype(np.float32))
        files["map"] = buf.getvalue()
    if settings.write_masks:
        files["mask"] = base64.b64decode(rec["mask"])
    if settings.write_overlays:
        rgb = Image.fromarray(decode_image(payload)).resize(amap.shape[::-1], Image.BILINEAR)
        vmin, vmax = calibration.raw_range(rec["threshold"])
        overlay = heatmap_rgb(amap, vmin, vmax, image=np.asarray(rgb))
        label = overlay_label(rec["score"], rec["is_anomaly"])
        files["overlay"] = _png(annotate_overlay(overlay, vmin, vmax, rec["threshold"], label))
    return Scored(
        float(rec["score"]),
        float(rec["raw_score"]),
        bool(rec["is_anomaly"]),
        float(rec["threshold"]),
        float(rec["mask_threshold"]),
        files,
    )


def score_batch(model, calibration, files: Sequence[Path], settings: BatchSettings) -> list[Scored | str]:
    """Read, score (one pyfunc call for the readable files) and render ``files``: one :class:`Scored` or the
    reason it was not scored (unreadable, not an image the server accepts) per file, in order."""
    read = [read_payload(f) for f in files]
    readable = [p for p, err in read if err is None]
    results = iter(predict_records(model, readable, settings.params) if readable else [])
    out: list[Scored | str] = []
    for payload, err in read:
        rec = err or next(results)
        out.append(rec if isinstance(rec, str) else render(rec, payload, settings, calibration))
    return out


def write_outputs(output: Path, stem: str, scored: Scored) -> dict[str, str]:
    """Write an image's files under ``output`` (each atomically: the complete file or none); returns the
    path of each, relative to ``output``, by kind.

    Raises:
        OSError: a file cannot be written (e.g. a name the output file system refuses).
    """
    from pradot.io import atomic_write

    written = {}
    for kind, content in scored.files.items():
        rel = output_rel(kind, stem)
        with atomic_write(output / rel) as tmp:
            tmp.write_bytes(content)
        written[kind] = rel
    return written
