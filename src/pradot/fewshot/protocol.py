"""The few-shot protocol of FOCT (section 5.1) as plain functions: support splits, the online order of the
queries, the ablation variants of Table 3, one split run on (cached) backbone features, its metrics and
the summary over splits. No tracking framework: ``pipelines/fewshot`` logs what these return.

* support split ``s`` of ``k`` shots: the first ``k`` images of split ``s``'s block of a seeded permutation
  of ``train/good`` (``support_indices``), so the 1-shot support of a split is inside its 2- and 4-shot
  supports and different splits share no image (when ``train/good`` has enough images);
* the test split is fixed; its images are streamed in a seeded order per split (``query_order``), the same
  for every shot count and variant, so the online memory of every row sees the same stream;
* metrics: image and pixel AUROC and F1-max, plus AU-sPRO (LOCO-style data: per-type image AUROC and
  AU-sPRO at FPR 0.05, official definitions) -- mean and standard deviation (ddof 1) over the splits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import f1_max, image_auroc, pixel_auroc, pixel_f1_max
from ..metrics.dataset import flat_metrics
from ..metrics.pro import Saturation
from ..metrics.report import loco_metrics
from ..names import markdown_cell
from .model import FOCT, FOCTConfig

__all__ = [
    "Variant",
    "VARIANT_NAMES",
    "variant_name",
    "ablation_variants",
    "support_indices",
    "query_order",
    "SplitResult",
    "run_split",
    "fewshot_metrics",
    "summarise",
    "SUMMARY_METRICS",
    "markdown_table",
]

#: the rows of the paper's Table 3, in its order
VARIANT_NAMES = ("vanilla", "ct", "oct", "foct")
#: metrics shown in the summary table (those present)
SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "image_f1_max", "pixel_f1_max", "au_spro_0.05", "seconds_per_query")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the three switches of Table 3 applied to a configuration."""

    name: str
    online: bool
    foreground: str
    distance: str

    def apply(self, config: FOCTConfig) -> FOCTConfig:
        return dataclasses.replace(config, online=self.online, foreground=self.foreground, distance=self.distance)


def variant_name(online: bool, foreground: str, distance: str) -> str:
    """Table 3's name of a switch combination (vanilla / ct / oct / foct), else ``distance-online-foreground``."""
    names = {(False, "none", "linear"): "vanilla", (False, "none", "learned"): "ct", (True, "none", "learned"): "oct"}
    if (online, foreground, distance) in names:
        return names[(online, foreground, distance)]
    if online and distance == "learned" and foreground != "none":
        return "foct" if foreground == "border" else f"foct-{foreground}"
    return f"{distance}-{'online' if online else 'offline'}-fg_{foreground}"


def ablation_variants(config: FOCTConfig, ablation: bool) -> list[Variant]:
    """The configured variant alone, or (``ablation``) Table 3's four rows: vanilla (linear distance, no
    online memory, no foreground), CT (learned distance), OCT (+ online memory), FOCT (+ foreground: the
    configured mask source, ``border`` when the configuration has none)."""
    if not ablation:
        return [
            Variant(
                variant_name(config.online, config.foreground, config.distance),
                config.online,
                config.foreground,
                config.distance,
            )
        ]
    fg = config.foreground if config.foreground != "none" else "border"
    return [
        Variant("vanilla", False, "none", "linear"),
        Variant("ct", False, "none", "learned"),
        Variant("oct", True, "none", "learned"),
        Variant(variant_name(True, fg, "learned"), True, fg, "learned"),
    ]


def support_indices(
    n_train: int, shots: int, split: int, seed: int = 0, max_shots: int | None = None, splits: int | None = None
) -> np.ndarray:
    """Indices (sorted) of the ``shots`` support images of ``split``.

    With ``max_shots`` and ``splits`` (the protocol's largest shot count and number of splits) and enough
    images (``splits x max_shots <= n_train``), split ``s`` owns the block ``perm[s*max_shots:(s+1)*max_shots]``
    of one permutation seeded by ``seed``, and its k-shot support is the block's first k images: supports are
    nested across shot counts and disjoint across splits (no two splits repeat an image). Otherwise each
    split takes the first ``shots`` images of its own permutation seeded by ``(seed, split)`` (nested, but
    splits may share images).

    Raises:
        ValueError: shots < 1, more shots than training images, or shots > max_shots.
    """
    if not 1 <= int(shots) <= int(n_train):
        raise ValueError(f"{shots}-shot supports need 1 <= shots <= {n_train} (the train/good images)")
    if max_shots is not None and splits is not None and int(splits) * int(max_shots) <= int(n_train):
        if int(shots) > int(max_shots):
            raise ValueError(f"shots={shots} exceeds max_shots={max_shots}")
        perm = np.random.default_rng(int(seed)).permutation(int(n_train))
        return np.sort(perm[int(split) * int(max_shots) :][: int(shots)])
    perm = np.random.default_rng([int(seed), int(split)]).permutation(int(n_train))
    return np.sort(perm[: int(shots)])


def query_order(n_test: int, split: int, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """The order in which split ``split`` streams the test images: a permutation seeded by ``(seed, split)``
    (the same for every shot count and variant), or the dataset's order."""
    if not shuffle:
        return np.arange(int(n_test))
    return np.random.default_rng([int(seed), int(split), 1]).permutation(int(n_test))


@dataclass
class SplitResult:
    """One (variant, shots, split) run: scores and maps in the test split's order; per-query seconds and
    episodic-memory sizes in stream order."""

    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, S, S) float32
    seconds: np.ndarray  # (N,) per query, stream order
    episodic_sizes: np.ndarray  # (N,) after each query, stream order
    semantic_size: int
    model: FOCT = field(repr=False)


def _rows(features: Mapping[int, np.ndarray | torch.Tensor], index) -> dict[int, torch.Tensor]:
    return {s: torch.as_tensor(np.ascontiguousarray(np.asarray(f[index]))) for s, f in features.items()}


def run_split(
    config: FOCTConfig,
    backbone,
    support_features: Mapping[int, np.ndarray],
    test_features: Mapping[int, np.ndarray],
    order: Sequence[int],
    *,
    device="cpu",
    masks=None,
    support_images: torch.Tensor | None = None,
    test_image: Callable[[int], torch.Tensor] | None = None,
) -> SplitResult:
    """Fit FOCT on the support's features, then stream the test images in ``order`` (one query at a time;
    the memory is updated when ``config.online``).

    Args:
        support_features: ``{stage: (k, D, H, W)}``; test_features: ``{stage: (N, D, H, W)}`` (memmaps welcome).
        masks: a mask source to share between runs (default: built from the config).
        support_images / test_image: the pixels, for mask sources that need them (SAM): (k, 3, S, S) and
            ``i -> (1, 3, S, S)``.
    """
    model = FOCT(config, backbone=backbone, device=device, masks=masks)
    model.fit_features(_rows(support_features, slice(None)), support_images)
    n = len(next(iter(test_features.values())))
    S = int(config.image_size)
    scores = np.zeros(n, np.float64)
    maps = np.zeros((n, S, S), np.float32)
    seconds, sizes = np.zeros(len(order)), np.zeros(len(order), np.int64)
    for pos, i in enumerate(order):
        i = int(i)
        t0 = time.perf_counter()
        images = test_image(i) if (test_image is not None and model.mask_source.needs_images) else None
        m, s = model.maps_from_features(_rows(test_features, slice(i, i + 1)), images=images, update=config.online)
        seconds[pos] = time.perf_counter() - t0
        sizes[pos] = len(model.episodic)
        maps[i], scores[i] = m[0].numpy(), float(s[0])
    return SplitResult(scores, maps, seconds, sizes, len(model.semantic), model)


def fewshot_metrics(dataset, samples, maps: np.ndarray, scores: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """Image/pixel AUROC and F1-max of a scored test split (image score = the model's, max of Eq. 8); on
    LOCO-style data also the official per-type image AUROC and AU-sPRO at FPR 0.05 (flat names:
    ``image_auroc_<type>``, ``au_spro_0.05``, ``au_spro_0.05_<type>``). Ground truth is resized (nearest)
    to the maps' size. Pixel metrics are skipped, with a note, when an anomalous image has no mask or every
    mask is blank.

    Returns:
        ``(metrics, notes)``.
    """
    size = maps.shape[-1]
    labels = np.array([int(s.label) for s in samples])
    channels = [np.asarray(dataset.load_channels(s, size=size), dtype=bool) for s in samples]
    out = {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores)}
    notes: list[str] = []
    if any(y == 1 and len(ch) == 0 for y, ch in zip(labels, channels)):
        notes.append("pixel metrics skipped: some anomalous test images have no ground-truth mask")
        return out, notes
    masks = [ch.any(axis=0) if len(ch) else np.zeros((size, size), bool) for ch in channels]
    if not any(m.any() for m in masks):
        notes.append("pixel metrics skipped: the anomalous test images' ground-truth masks are all blank")
        return out, notes
    out["pixel_auroc"] = pixel_auroc(masks, maps)
    out["pixel_f1_max"] = pixel_f1_max(masks, maps)
    if dataset.has_saturation:
        loco = loco_metrics(
            list(maps),
            [s.anomaly_type for s in samples],
            channels,
            [[Saturation.coerce(d) for d in s.defects] for s in samples],
            image_scores=scores,
            max_fprs=(0.05,),
        )
        flat = flat_metrics(loco)
        flat.pop("image_auroc", None)  # LOCO's mean over types; ours is all anomalies vs good
        out.update(flat)
    return out, notes


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Rows ``{"variant", "shots", "split", <metric>: value, ...}`` -> one dict per (variant, shots), in
    first-seen order: ``{"variant", "shots", "splits", "<metric>_mean", "<metric>_std"}`` (std with
    ddof 1; 0 for one split)."""
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault((r["variant"], int(r["shots"])), []).append(r)
    out = []
    for (variant, shots), items in groups.items():
        rec: dict = {"variant": variant, "shots": shots, "splits": len(items)}
        keys = [k for k in items[0] if k not in ("variant", "shots", "split") and isinstance(items[0][k], (int, float))]
        for k in keys:
            v = np.array([float(it[k]) for it in items if k in it], dtype=np.float64)
            rec[f"{k}_mean"] = float(v.mean())
            rec[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(rec)
    return out


def markdown_table(summary: Sequence[Mapping], metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """The summary as a Markdown table: one row per (variant, shots), ``mean ± std`` per metric present
    (AUROC, F1 and AU-sPRO in %); the variant's name as :func:`pradot.names.markdown_cell`."""
    shown = [m for m in metrics if any(f"{m}_mean" in r for r in summary)]
    head = "| variant | shots | splits | " + " | ".join(shown) + " |"
    lines = [head, "|" + "---|" * (3 + len(shown))]
    for r in summary:
        cells = []
        for m in shown:
            if f"{m}_mean" not in r:
                cells.append("-")
                continue
            scale = 1.0 if m == "seconds_per_query" else 100.0
            digits = 3 if m == "seconds_per_query" else 1
            cells.append(f"{r[f'{m}_mean'] * scale:.{digits}f} ± {r[f'{m}_std'] * scale:.{digits}f}")
        lines.append(
            f"| {markdown_cell(str(r['variant']))} | {r['shots']} | {r['splits']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"
