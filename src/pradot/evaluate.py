"""Evaluate official-format anomaly maps against a dataset's ground truth.

    python -m pradot.evaluate --dataset-root ROOT --category CAT --anomaly-maps MAPS \\
        --output-dir OUT [--dataset mvtec_loco|mvtec_ad|...|mvtec_ad2|real_iad] [--max-fprs ...] [--threshold T]

Anomaly maps are real-valued 2-D TIFF files at ``MAPS/CAT/test/<anomaly_type>/<image_id>.tiff``
(``.tif`` accepted too), one per test image, as for the official MVTec evaluation tools. A map
whose size differs from its ground truth is resized to it (bilinear, half-pixel centres, like
``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``); the count is
recorded as ``"resized_maps"`` in the output, with a note, and a warning is logged (printed by the CLI).

Output ``OUT/metrics.json``:

* LOCO-style data (``has_saturation``): the official MVTec LOCO shape
  ``{"classification": {"auc_roc": {...}}, "localization": {"auc_spro": {...}}}``;
* AD-style data: ``{"image_auroc", "pixel_auroc", "au_pro_0.3"}`` (MVTec AD 2: ``au_pro_0.05``; with
  ``--threshold``, also ``seg_f1``);

metrics that the test split cannot define are skipped with a note naming the cause and the others are
still written (image AUROC without anomalous or without good images; pixel metrics when some anomalous
image has no mask or every mask is blank);

plus ``"image_threshold_metrics"`` (AUPR, F1-max and the F1-optimal threshold of the image scores, max of each
map; with ``--threshold`` also F1, precision and recall at it), ``"resized_maps"``, ``"notes"``, ``"dataset"``,
``"category"`` and ``"num_test_images"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pradot.metrics.dataset import dataset_metrics

__all__ = [
    "MAP_EXTENSIONS",
    "MissingMapsError",
    "find_map",
    "read_map",
    "resize_bilinear",
    "evaluate",
    "image_threshold_metrics",
    "main",
]

MAP_EXTENSIONS: tuple[str, ...] = (".tiff", ".tif", ".TIFF", ".TIF")

log = logging.getLogger(__name__)


class MissingMapsError(FileNotFoundError):
    """Some test images have no anomaly map file; the message lists how many and where."""


def find_map(maps_root: Path, category: str, anomaly_type: str, image_id: str) -> Path | None:
    """The map file of one test image (``.tiff`` preferred over ``.tif``), or None."""
    base = Path(maps_root) / category / "test" / anomaly_type / image_id
    for ext in MAP_EXTENSIONS:
        path = base.with_name(base.name + ext)
        if path.is_file():
            return path
    return None


def read_map(path: Path) -> np.ndarray:
    """A 2-D real-valued anomaly map from a TIFF file (singleton axes are squeezed)."""
    import tifffile

    try:
        arr = np.asarray(tifffile.imread(str(path)))
    except Exception as exc:  # tifffile raises several exception types for corrupt files
        raise ValueError(f"cannot read anomaly map {path}: {exc}") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"anomaly map {path} must be a 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"anomaly map {path} contains non-finite values (NaN or inf)")
    return arr


def _linear_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a 2-D float array to ``size = (H, W)`` (half-pixel centres, edges
    clamped, no antialiasing); keeps a floating dtype."""
    a = np.asarray(a)
    h, w = int(size[0]), int(size[1])
    if a.shape == (h, w):
        return a
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32
    x = a.astype(np.float64)
    y0, y1, wy = _linear_weights(h, a.shape[0])
    x = x[y0] * (1.0 - wy)[:, None] + x[y1] * wy[:, None]
    x0, x1, wx = _linear_weights(w, a.shape[1])
    x = x[:, x0] * (1.0 - wx)[None, :] + x[:, x1] * wx[None, :]
    return x.astype(dtype)


def _missing_message(missing: list[Path], total: int, maps_root: Path) -> str:
    shown = "\n".join(f"  {p}" for p in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"{len(missing)} of {total} anomaly maps are missing under {maps_root} "
        f"(expected <anomaly-maps>/<category>/test/<anomaly_type>/<image_id>.tiff, one per test image). "
        f"First expected paths:\n{shown}{more}"
    )


def evaluate(
    dataset_root: str | Path,
    category: str,
    anomaly_maps: str | Path,
    output_dir: str | Path | None = None,
    dataset: str = "mvtec_loco",
    max_fprs: Sequence[float] | None = None,
    progress: bool = True,
    threshold: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict:
    """Compute the metrics of the maps under ``anomaly_maps`` for the test split of
    ``dataset``/``category``; write ``output_dir/metrics.json`` when ``output_dir`` is given.

    ``max_fprs``: AU-sPRO limits (LOCO-style, default 0.01 0.05 0.1 0.3 1.0) or AU-PRO limits
    (AD-style, default 0.3; MVTec AD 2: 0.05). ``threshold``: map values above it are anomalous
    (AD-style data then also get ``seg_f1``). ``options``: the loader's options
    (:func:`pradot.data.load_dataset`, e.g. Real-IAD ``resolution``, ``views``, ``variant``; VisA ``csv_path``).
    Raises MissingMapsError when map files are missing.
    """
    from tqdm import tqdm

    from pradot.data import load_dataset

    try:
        ds = load_dataset(dataset, dataset_root, category, **dict(options or {}))
    except TypeError as exc:  # an option the loader does not take
        raise ValueError(
            f"dataset {dataset!r} does not take the loader option(s) {sorted(options or {})} ({exc}); "
            "see pradot.data.load_dataset for each dataset's options"
        ) from None
    samples = ds.samples("test")
    if not samples:
        raise ValueError(f"dataset {dataset!r} category {category!r} under {dataset_root} has no test images")
    maps_root = Path(anomaly_maps)

    paths: list[Path] = []
    missing: list[Path] = []
    for s in samples:
        p = find_map(maps_root, category, s.anomaly_type, Path(s.image_path).stem)
        if p is None:
            missing.append(maps_root / category / "test" / s.anomaly_type / f"{Path(s.image_path).stem}.tiff")
        else:
            paths.append(p)
    if missing:
        raise MissingMapsError(_missing_message(missing, len(samples), maps_root))

    maps: list[np.ndarray] = []
    resized: list[tuple[Path, tuple[int, ...], tuple[int, ...]]] = []
    for s, p in tqdm(
        list(zip(samples, paths)), desc=f"reading maps ({category})", unit="map", disable=not progress, file=sys.stderr
    ):
        a = read_map(p)
        size = tuple(ds.load_channels(s, size=None).shape[1:])  # (0, H, W) for good images
        if a.shape != tuple(size):
            resized.append((p, a.shape, tuple(size)))
            a = resize_bilinear(a, size)
        maps.append(a)

    notes: list[str] = []
    if resized:
        p0, got, want = resized[0]
        note = (
            f"{len(resized)} of {len(samples)} anomaly maps differ in size from their ground truth "
            f"(e.g. {p0}: {got[0]}x{got[1]} vs {want[0]}x{want[1]}, HxW) and were resized bilinearly to it; "
            f"the official tools expect maps at the original image resolution"
        )
        log.warning("%s", note)
        notes.append(note)
    result, more = dataset_metrics(ds, samples, maps, max_fprs=max_fprs, threshold=threshold)
    notes.extend(more)
    result.update(image_threshold_metrics([s.label for s in samples], maps, threshold, notes))

    result.update(
        {
            "resized_maps": len(resized),
            "notes": notes,
            "dataset": str(dataset),
            "category": str(category),
            "num_test_images": len(samples),
        }
    )
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def image_threshold_metrics(
    labels: Sequence[int], maps: Sequence[np.ndarray], threshold: float | None, notes: list[str]
) -> dict:
    """``{"image_threshold_metrics": {"aupr", "f1_max", "f1_optimal_threshold"[, "f1_at_threshold",
    "precision_at_threshold", "recall_at_threshold"]}}`` of the image scores (max of each map) against the
    labels (:mod:`pradot.metrics.threshold`, scikit-learn's precision-recall curve); the ``*_at_threshold``
    values need ``threshold``. Empty, with a note, when the split lacks normal or anomalous images."""
    from pradot.metrics.classification import image_scores_from_maps
    from pradot.metrics.threshold import average_precision, best_f1, threshold_report

    if len(set(int(x) for x in labels)) < 2:
        note = "image_threshold_metrics skipped: the test split needs normal and anomalous images"
        log.warning("%s", note)
        notes.append(note)
        return {}
    scores = image_scores_from_maps(maps)
    if threshold is not None:
        return {"image_threshold_metrics": threshold_report(labels, scores, float(threshold))}
    f1_max, best = best_f1(labels, scores)
    return {
        "image_threshold_metrics": {
            "aupr": average_precision(labels, scores),
            "f1_max": f1_max,
            "f1_optimal_threshold": best,
        }
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    try:
        from pradot.data import DATASET_KINDS
    except ImportError:  # pragma: no cover - the data package is part of the project
        DATASET_KINDS = ("mvtec_loco", "mvtec_ad", "visa", "mpdd", "folder", "synthetic", "mvtec_ad2", "real_iad")
    p = argparse.ArgumentParser(
        prog="python -m pradot.evaluate",
        description="Evaluate anomaly maps (MAPS/CAT/test/<type>/<id>.tiff) and write OUT/metrics.json.",
    )
    p.add_argument("--dataset-root", required=True, help="folder that holds the dataset's categories")
    p.add_argument("--category", required=True)
    p.add_argument("--anomaly-maps", required=True, help="base folder of the .tiff anomaly maps")
    p.add_argument("--output-dir", required=True, help="metrics.json is written here")
    p.add_argument("--dataset", default="mvtec_loco", choices=list(DATASET_KINDS))
    p.add_argument(
        "--max-fprs",
        type=float,
        nargs="+",
        default=None,
        help="integration limits (LOCO default: 0.01 0.05 0.1 0.3 1.0; AD-style default: 0.3)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on map values: AD-style data also get seg_f1 (MVTec AD 2's SegF1), and "
        "every dataset F1/precision/recall of the image decisions max(map) > threshold",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset loader option, repeatable: Real-IAD resolution=256, views=C1,C3, "
        "variant=realiad_jsons_sv, json_dir=...; VisA csv_path=...",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    args.options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            p.error(f"--option takes KEY=VALUE (e.g. --option resolution=256), got {item!r}")
        args.options[key.strip()] = value
    if args.max_fprs and not all(0.0 < f <= 1.0 for f in args.max_fprs):
        p.error(f"--max-fprs values must lie in (0, 1], got {args.max_fprs}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        result = evaluate(
            args.dataset_root,
            args.category,
            args.anomaly_maps,
            args.output_dir,
            dataset=args.dataset,
            max_fprs=args.max_fprs,
            progress=not args.no_progress,
            threshold=args.threshold,
            options=args.options,
        )
    except (FileNotFoundError, ValueError) as exc:  # includes MissingMapsError and DatasetError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k != "notes"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.output_dir) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
