"""Register a few-shot model so it can be served: FOCT fitted on one support (split 0 of the largest shot
count, the last variant of the run), with a fresh (empty) episodic memory and a decision threshold
calibrated on normal images that are not in its support.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines import registry, tracking
from pipelines.fewshot.data import FeatureSet, images_of, load_features
from pipelines.fewshot.plan import FewShotPlan
from pipelines.tags import CALIBRATION_SOURCE
from pradot.fewshot.protocol import Variant

log = logging.getLogger(__name__)

__all__ = ["Registered", "Logged", "calibration_samples", "log_fewshot"]


@dataclass(frozen=True)
class Registered:
    name: str | None
    version: str | None
    note: str  # what was registered, or why nothing was


@dataclass(frozen=True)
class Logged:
    """The few-shot model logged in the parent run, to register once that run has ended."""

    model_uri: str | None
    tags: registry.VersionTags | None
    note: str  # what will be registered, or why nothing is

    def register(self, name: str) -> Registered:
        """Register the logged model (after its run ended: one call with every tag)."""
        if self.model_uri is None:
            return Registered(None, None, self.note)
        version = registry.register(self.model_uri, name, self.tags)
        return Registered(name, version, f"{self.note} as {name} v{version}")


def calibration_samples(plan: FewShotPlan, splits, support: Sequence[int]) -> tuple[list, str]:
    """Up to ``calibration_images`` normals for the threshold: the validation split, else train/good images
    outside the support. Returns ``(samples, source)``; no samples when every normal is in the support."""
    n = plan.calibration_images
    if splits.validation:
        return list(splits.validation[:n]), "validation"
    used = {int(i) for i in support}
    rest = [s for i, s in enumerate(splits.train) if i not in used]
    return rest[:n], "train/good outside the support"


def log_fewshot(
    plan: FewShotPlan,
    variant: Variant,
    splits,
    backbone,
    pool: FeatureSet,
    device,
    run_id: str,
    metrics: dict[str, float],
) -> Logged:
    """Fit, calibrate, save and log (in the active run, not yet registered) the served few-shot model (see
    the module docstring)."""
    import mlflow

    from pradot.calibration import Calibration
    from pradot.fewshot import FOCT

    shots = max(plan.shots)
    support = plan.support(len(splits.train), shots, 0)
    cal_samples, source = calibration_samples(plan, splits, support)
    if not cal_samples:
        note = (
            f"not registered: all {len(splits.train)} training images are in the {shots}-shot support, so no "
            f"normal image is left to calibrate a threshold (add validation images or lower the shots)"
        )
        log.warning("%s", note)
        return Logged(None, None, note)
    config = variant.apply(plan.foct)
    model = FOCT(config, backbone=backbone, device=device)
    needs = model.mask_source.needs_images
    model.fit_features(pool.take(support), images_of(pool.samples_at(support), config.image_size) if needs else None)
    cal = load_features(plan, backbone, cal_samples, range(len(cal_samples)), "calibration", device)
    _, scores = model.maps_from_features(
        cal.take(range(len(cal_samples))), images=images_of(cal_samples, config.image_size) if needs else None
    )
    calibration = Calibration.calibrate(scores.numpy(), plan.calibration_quantile)
    mlflow.set_tag(CALIBRATION_SOURCE, source)
    mlflow.log_dict(calibration.to_dict(), "model_files/calibration.json")
    names = [str(Path(s.image_path).relative_to(splits.dataset.root)) for s in pool.samples_at(support)]
    tags = registry.FewShotTags(
        dataset=plan.data.kind,
        category=plan.data.category,
        run_id=run_id,
        threshold=calibration.threshold,
        backbone=config.backbone,
        stages=config.stages,
        image_size=config.image_size,
        metrics=metrics,
        calibration_source=source,
        shots=shots,
        support_split=0,
        support=tuple(names),
        config={k: v for k, v in asdict(config).items() if k not in ("backbone", "stages", "image_size")},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "foct_model.pt", include_backbone=plan.include_backbone)
        model_uri = registry.log_model(path, calibration, tags, tracking.example_image(splits))
    note = f"registered {variant.name} ({shots}-shot, split 0, calibrated on {len(cal_samples)} {source} images)"
    return Logged(model_uri, tags, note)
