"""Evaluation metrics: image AUROC, pixel AUROC, AU-PRO (MVTec AD) and AU-sPRO (MVTec LOCO),
following the official definitions (see ``pradot.metrics.pro`` for the exact conventions)."""

from .classification import (
    GOOD,
    f1_max,
    image_auroc,
    image_scores_from_maps,
    loco_image_auroc,
    pixel_auroc,
    pixel_f1_max,
    pixel_roc_curve,
    roc_curve_points,
)
from .pro import (
    DEFAULT_MAX_FPRS,
    PRO_SATURATION,
    Saturation,
    SproCurve,
    area_under_curve,
    au_pro,
    au_spro,
    connected_regions,
    pro_curve,
    spro_curve,
)
from .report import ad_metrics, fpr_key, loco_metrics

__all__ = [
    "GOOD",
    "DEFAULT_MAX_FPRS",
    "PRO_SATURATION",
    "Saturation",
    "SproCurve",
    "image_auroc",
    "image_scores_from_maps",
    "loco_image_auroc",
    "pixel_auroc",
    "pixel_roc_curve",
    "roc_curve_points",
    "f1_max",
    "pixel_f1_max",
    "area_under_curve",
    "au_pro",
    "au_spro",
    "connected_regions",
    "pro_curve",
    "spro_curve",
    "ad_metrics",
    "fpr_key",
    "loco_metrics",
]
