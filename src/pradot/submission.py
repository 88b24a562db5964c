"""MVTec AD 2 submissions: a model's anomaly maps of the private test splits in the benchmark server's format.

    python -m pradot.submission --model model.pt --calibration calibration.json \\
        --dataset-root ROOT --category can --output-dir SUBMISSION [--splits test_private test_private_mixed]

For every image of each split (default: both private splits; ``test_public`` too if asked), at the
image's own resolution::

    SUBMISSION/anomaly_images/<category>/<split>/<stem>.tiff              float16 anomaly map
    SUBMISSION/anomaly_images_thresholded/<category>/<split>/<stem>.png   binary PNG, 255 = anomalous

(``test_public`` keeps its ``good``/``bad`` folder: ``<split>/<type>/<stem>``). The model's map (at its
input size) is upsampled bilinearly to the image size (half-pixel centres, as the served maps); a pixel is
anomalous when its map value exceeds the calibration's threshold (the threshold on image scores: an image
score is its map's maximum, so an image is flagged exactly when one of its pixels is). ``--evaluate-public``
also scores ``test_public`` and writes ``public_metrics.json`` with the benchmark's metrics: AU-PRO up to
FPR 0.05 and SegF1 at that threshold (plus image AUROC). The model file and ``calibration.json`` are those a
training run logs (its registered model's ``artifacts/pradot_model.pt`` and ``artifacts/calibration.json``;
or any ``PRADOT.save`` / ``Calibration.save`` files).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .calibration import Calibration
from .data.base import Sample, image_size_of
from .data.mvtec_ad2 import PRIVATE_SPLITS, PUBLIC_TEST, MVTecAD2Dataset
from .maps import resize_maps

__all__ = [
    "MAPS_DIR",
    "THRESHOLDED_DIR",
    "SubmissionSummary",
    "upsample_map",
    "submission_paths",
    "write_submission_maps",
    "write_mvtec_ad2_submission",
    "main",
]

log = logging.getLogger(__name__)

MAPS_DIR = "anomaly_images"
THRESHOLDED_DIR = "anomaly_images_thresholded"
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class SubmissionSummary:
    """What was written: images per split, the threshold, maps clipped to the float16 range."""

    out_dir: Path
    threshold: float
    images: dict[str, int] = field(default_factory=dict)
    clipped_maps: int = 0
    public_metrics: dict | None = None


def upsample_map(amap: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map -> (H, W) float32, bilinear with half-pixel centres, antialiased when shrinking
    (:func:`pradot.maps.resize_maps`, ``"half_pixel_shrink"``)."""
    m = torch.as_tensor(np.asarray(amap, dtype=np.float32))
    return resize_maps(m, (int(size[0]), int(size[1])), "half_pixel_shrink").numpy()


def submission_paths(out_dir: str | Path, category: str, sample: Sample) -> tuple[Path, Path]:
    """``(tiff, png)`` of one image: ``<split>/<stem>`` for a private split, ``<split>/<type>/<stem>`` for
    ``test_public`` (the dataset's own relative path, as the benchmark's tools write it)."""
    rel = Path(category) / sample.split / sample.image_path.stem
    if sample.split in ("test", PUBLIC_TEST):
        rel = Path(category) / PUBLIC_TEST / sample.anomaly_type / sample.image_path.stem
    out = Path(out_dir)
    return out / MAPS_DIR / rel.with_suffix(".tiff"), out / THRESHOLDED_DIR / rel.with_suffix(".png")


def write_submission_maps(
    out_dir: str | Path, category: str, samples: Sequence[Sample], maps: np.ndarray, threshold: float
) -> int:
    """Write each sample's map upsampled to its image's size: the float16 TIFF and the thresholded PNG
    (``map > threshold`` -> 255). Returns how many maps had values beyond the float16 range (clipped)."""
    import tifffile
    from PIL import Image

    clipped = 0
    for s, amap in zip(samples, maps):
        full = upsample_map(amap, image_size_of(s.image_path))
        if np.abs(full).max() > FLOAT16_MAX:
            clipped += 1
            full = np.clip(full, -FLOAT16_MAX, FLOAT16_MAX)
        tiff, png = submission_paths(out_dir, category, s)
        tiff.parent.mkdir(parents=True, exist_ok=True)
        png.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tiff, full.astype(np.float16))
        Image.fromarray(np.where(full > threshold, 255, 0).astype(np.uint8)).save(png)
    return clipped


def write_mvtec_ad2_submission(
    model,
    calibration: Calibration,
    dataset: MVTecAD2Dataset,
    out_dir: str | Path,
    splits: Sequence[str] = PRIVATE_SPLITS,
    batch_size: int = 8,
    evaluate_public: bool = False,
    progress: bool = False,
) -> SubmissionSummary:
    """Score ``splits`` of an MVTec AD 2 category with ``model`` (anything with ``score`` and
    ``config.image_size``) and write them in the submission format; the threshold is ``calibration``'s.

    ``evaluate_public``: also score ``test_public`` and return its AU-PRO_0.05, SegF1 and image AUROC.
    """
    from .engine import score_samples
    from .metrics.dataset import dataset_metrics

    size = int(model.config.image_size)
    summary = SubmissionSummary(Path(out_dir), float(calibration.threshold))
    for split in splits:
        samples = dataset.samples("test") if split == PUBLIC_TEST else dataset.private_samples(split)
        scored = score_samples(model, samples, size, batch_size, progress=progress)
        summary.clipped_maps += write_submission_maps(
            out_dir, dataset.category, samples, scored.maps, summary.threshold
        )
        summary.images[split] = len(samples)
        log.info("%s/%s: %d maps written", dataset.category, split, len(samples))
    if summary.clipped_maps:
        log.warning(
            "%d maps had values beyond the float16 range (+-%g) and were clipped", summary.clipped_maps, FLOAT16_MAX
        )
    if evaluate_public:
        samples = dataset.samples("test")
        scored = score_samples(model, samples, size, batch_size, progress=progress)
        metrics, notes = dataset_metrics(dataset, samples, list(scored.maps), gt_size=size, threshold=summary.threshold)
        summary.public_metrics = {
            **metrics,
            "notes": notes,
            "threshold": summary.threshold,
            "evaluated_at": f"{size}x{size} (the model's input size)",
        }
    return summary


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pradot.submission",
        description="Write an MVTec AD 2 submission (float16 TIFF maps + thresholded PNGs).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a PRADOT or ensemble model file (a registered model's artifacts/pradot_model.pt)",
    )
    p.add_argument("--calibration", required=True, help="calibration.json (its threshold thresholds the maps)")
    p.add_argument("--dataset-root", required=True, help="the folder that holds the MVTec AD 2 categories")
    p.add_argument("--category", required=True)
    p.add_argument("--output-dir", required=True, help="the submission folder")
    p.add_argument(
        "--splits",
        nargs="+",
        default=list(PRIVATE_SPLITS),
        choices=[*PRIVATE_SPLITS, PUBLIC_TEST],
        help="splits to write (default: both private splits)",
    )
    p.add_argument(
        "--evaluate-public",
        action="store_true",
        help="also write OUT/public_metrics.json: AU-PRO_0.05, SegF1, image AUROC on test_public",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    from .data import DatasetError, load_dataset
    from .persistence import load_scoring_model

    try:
        dataset = load_dataset("mvtec_ad2", args.dataset_root, args.category)
        assert isinstance(dataset, MVTecAD2Dataset)
        calibration = Calibration.load(args.calibration)
        model = load_scoring_model(args.model, device=args.device)
        summary = write_mvtec_ad2_submission(
            model,
            calibration,
            dataset,
            args.output_dir,
            args.splits,
            args.batch_size,
            evaluate_public=args.evaluate_public,
        )
    except (FileNotFoundError, ValueError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.public_metrics is not None:
        path = Path(args.output_dir) / "public_metrics.json"
        path.write_text(json.dumps(summary.public_metrics, indent=2) + "\n")
        print(f"wrote {path}")
    print(
        json.dumps(
            {
                "output_dir": str(summary.out_dir),
                "threshold": summary.threshold,
                "images": summary.images,
                "clipped_maps": summary.clipped_maps,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
