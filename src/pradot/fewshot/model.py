"""FOCT (few-shot anomaly detection with foreground-aware online conditional transport): a frozen backbone,
the semantic memory of the support images, the online episodic memory and the CT navigators' distance.

```python
from pradot.fewshot import FOCT, FOCTConfig
model = FOCT(FOCTConfig(backbone="efficientnet_lite0", image_size=224)).fit(support)   # (k, 3, S, S) in [0, 1]
maps, scores = model.score(queries)                  # memory unchanged (the default)
maps, scores = model.score(queries, update=True)     # online: each query then calibrates the episodic memory
model.save("foct.pt"); FOCT.load("foct.pt")          # format "pradot-foct-v1" (pradot.persistence serves it)
```

Per query image (FOCT sections 4.2-4.3), in the given order:

1. patch features f (m, C) and, when the memory is updated, their foreground flags;
2. phi* = Adam on the CT distance (Eq. 4) between the semantic memory M^s and f, from the fitted phi;
3. scores s_j (Eq. 8) against the memory bank M_{t-1} = [M^s, M^e_{t-1}]; image score s* = max_j s_j;
   the map is s upsampled (bilinear) to the input size and smoothed (Gaussian, sigma 4 px);
4. with ``update``: Delta M^e = the Top-K query features by forward transport probability to M^s
   (Eq. 6), appended to M^e; compressed by the greedy coreset to lambda L when it reaches L (Eq. 7).

The query is scored before its own features enter the memory (so a score never comes from a feature
matching itself, and a request scores the same whether or not it updates the memory); the relevance of
Eq. 6 is measured against the semantic memory only (as Eq. 4-6 are written), so the support images stay
the anchor of what "normal" means however long the stream. ``update_below`` adds a check the paper does
not need but a server does: an image whose score exceeds it (e.g. the calibrated threshold) adds
nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..backbone import Backbone, backbone_state, load_backbone, restore_backbone
from ..base import FeatureModel
from ..checkpoint import load_state, save_state
from ..errors import InputError, NotFittedError
from ..maps import check_sigma
from .ct import anomaly_scores, euclidean_cost, forward_transport
from .distance import DISTANCES, NavigatorDistance, fit_distance
from .foreground import FOREGROUNDS, MaskSource, mask_source
from .memory import EpisodicMemory, SemanticMemory, semantic_memory, topk_augmentation
from .patches import patch_features, score_maps

__all__ = ["FOCT_FORMAT", "FOCTConfig", "FOCT", "kernel_scale"]

log = logging.getLogger(__name__)

#: the ``"format"`` of FOCT model files (:mod:`pradot.checkpoint`)
FOCT_FORMAT = "pradot-foct-v1"


@dataclass
class FOCTConfig:
    """FOCT's hyper-parameters; the defaults are the paper's (section 5.1).

    ``online`` is what the few-shot protocol does with the test stream (``score(update=config.online)``);
    ``score`` itself never updates the memory unless asked. ``foreground`` / ``online`` / ``distance`` are
    the switches of the paper's ablation (Table 3).
    """

    backbone: str = "wide_resnet50_2"
    stages: tuple[int, ...] = (2, 3)
    image_size: int = 336
    patch_size: int = 3  # local neighbourhood of the patch features (PatchCore)
    feature_dim: int | None = None  # channel pooling of the patch features (None: all channels)
    foreground: str = "border"  # border | none | sam
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    foreground_ratio: float = 0.10  # alpha
    background_ratio: float = 0.075  # beta
    online: bool = True
    capacity: int = 100  # L
    compression: float = 0.25  # lambda
    top_foreground: int = 10
    top_background: int = 40
    distance: str = "learned"  # learned | linear
    temperature: float = 0.1  # d_phi's unit, as a fraction of the support's median matching distance
    hidden: int = 256
    lr: float = 1e-4
    steps: int = 100
    rho: float = 0.5
    smoothing_sigma: float = 4.0
    projection_dim: int | None = 128  # Johnson-Lindenstrauss projection of the coreset selection
    seed: int = 0

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        checks = [
            (self.foreground in FOREGROUNDS, f"foreground must be one of {list(FOREGROUNDS)}, got {self.foreground!r}"),
            (self.distance in DISTANCES, f"distance must be one of {list(DISTANCES)}, got {self.distance!r}"),
            (len(self.stages) > 0, "at least one backbone stage is needed (paper: 2 and 3)"),
            (int(self.image_size) >= 16, f"image_size must be >= 16, got {self.image_size}"),
            (
                0 < float(self.foreground_ratio) <= 1 and 0 < float(self.background_ratio) <= 1,
                f"foreground_ratio and background_ratio (alpha, beta) must lie in (0, 1], got "
                f"{self.foreground_ratio}, {self.background_ratio}",
            ),
            (int(self.capacity) >= 1, f"capacity (L) must be >= 1, got {self.capacity}"),
            (0 < float(self.compression) < 1, f"compression (lambda) must lie in (0, 1), got {self.compression}"),
            (
                int(self.top_foreground) >= 0
                and int(self.top_background) >= 0
                and int(self.top_foreground) + int(self.top_background) >= 1,
                f"top_foreground + top_background (K) must be >= 1, got {self.top_foreground}, {self.top_background}",
            ),
            (0 <= float(self.rho) <= 1, f"rho must lie in [0, 1], got {self.rho}"),
            (
                int(self.steps) >= 0 and float(self.lr) > 0,
                f"steps >= 0 and lr > 0 are required, got {self.steps}, {self.lr}",
            ),
            (int(self.hidden) >= 1 and int(self.patch_size) >= 1, "hidden and patch_size must be >= 1"),
            (float(self.temperature) > 0, f"temperature must be > 0, got {self.temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.smoothing_sigma = check_sigma(self.smoothing_sigma)


def kernel_scale(memory: torch.Tensor, support: torch.Tensor) -> float:
    """The unit of the navigators' distance before the temperature: the median Euclidean distance from
    the support's patch features to their nearest memory item, over the patches not in the memory (a
    normal feature's typical matching distance); the median nearest-neighbour distance within the memory when
    every patch is in it; 1 when neither exists."""
    d = torch.cdist(support.float(), memory.float()).min(dim=1).values
    d = d[d > 1e-6]
    if len(d):
        return float(d.median())
    if len(memory) > 1:
        dm = torch.cdist(memory.float(), memory.float())
        dm.fill_diagonal_(float("inf"))
        nn_d = dm.min(dim=1).values
        nn_d = nn_d[torch.isfinite(nn_d) & (nn_d > 1e-6)]
        if len(nn_d):
            return float(nn_d.median())
    return 1.0


class FOCT(nn.Module, FeatureModel):
    """Few-shot model (a :class:`pradot.base.FeatureModel`): ``fit(support)``, ``score(images, update=False) ->
    (maps, scores)``, ``maps_from_features``, ``state``/``save``. The image score is Eq. 8's maximum patch
    score (before upsampling and smoothing), not the maximum of the map.

    Args:
        config: :class:`FOCTConfig`.
        backbone: a frozen :class:`~pradot.backbone.Backbone` with ``config.stages`` (default: built from
            ``config.backbone``).
        device: where features, memories and the distance live.
        masks: the foreground mask source (default: :func:`pradot.fewshot.foreground.mask_source` of the
            config; checked here, before any work).
    """

    KIND = "foct"
    FORMAT = FOCT_FORMAT
    #: the model has an online memory that ``score(update=True)`` calibrates (the served ``online_update``)
    online_memory = True

    def __init__(
        self,
        config: FOCTConfig,
        backbone: Backbone | None = None,
        device: str | torch.device = "cpu",
        masks: MaskSource | None = None,
    ):
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        self.mask_source = (
            masks
            if masks is not None
            else mask_source(
                config.foreground,
                sam_checkpoint=config.sam_checkpoint,
                sam_model_type=config.sam_model_type,
                device=self.device,
            )
        )
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.stages)
        if tuple(self.backbone.stages) != tuple(config.stages):
            raise InputError(f"backbone stages {self.backbone.stages} != config stages {config.stages}")
        self.backbone.to(self.device)
        self.semantic: SemanticMemory | None = None
        self.episodic: EpisodicMemory | None = None
        self.distance: NavigatorDistance | None = None
        self.queries_seen = 0  # queries that updated the memory
        self.last_added: list[torch.Tensor] = []  # per query of the last update: the patch indices added
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ features
    @property
    def fitted(self) -> bool:
        return self.semantic is not None

    def patches(self, features: Mapping[int, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Backbone features ``{stage: (B, D, H, W)}`` -> patch features (B, C, h, w) on the device."""
        feats = {
            s: torch.as_tensor(
                np.asarray(features[s]) if not isinstance(features[s], torch.Tensor) else features[s]
            ).to(self.device)
            for s in self.config.stages
        }
        return patch_features(feats, self.config.stages, self.config.patch_size, self.config.feature_dim)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 16) -> dict[int, torch.Tensor]:
        """Backbone features of prepared images, ``batch_size`` at a time: ``{stage: (B, D, H, W)}``."""
        out: dict[int, list] = {s: [] for s in self.config.stages}
        for i in range(0, len(images), batch_size):
            for s, f in self.backbone(images[i : i + batch_size].to(self.device)).items():
                out[s].append(f)
        return {s: torch.cat(v) for s, v in out.items()}

    # ------------------------------------------------------------------ fitting
    def fit(self, support, batch_size: int = 16) -> FOCT:
        """Build the semantic memory from k support images (k, 3, H, W) in [0, 1]; empty episodic memory."""
        images = self.prepare(support)
        return self.fit_features(self.features(images, batch_size), images)

    @torch.no_grad()
    def fit_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], images: torch.Tensor | None = None
    ) -> FOCT:
        """Like :meth:`fit` from the support's backbone features ``{stage: (k, D, H, W)}`` (e.g. cached);
        ``images`` (k, 3, S, S) are needed only by mask sources that read pixels (SAM).

        Raises:
            InputError: no support image, or a stage missing.
        """
        self.check_features(features)
        x = self.patches(features)
        if len(x) == 0:
            raise InputError("few-shot fitting needs at least one support image")
        cfg = self.config
        masks = self.mask_source.masks(x, images).to(x.device)
        self.semantic = semantic_memory(
            x, masks, cfg.foreground_ratio, cfg.background_ratio, cfg.projection_dim, cfg.seed
        )
        support = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        scale = kernel_scale(self.semantic.features, support) * float(cfg.temperature)
        self.distance = NavigatorDistance(x.shape[1], cfg.hidden, cfg.distance, scale, cfg.seed).to(self.device)
        self.episodic = EpisodicMemory(x.shape[1], cfg.capacity, cfg.compression, cfg.projection_dim, cfg.seed)
        self.episodic.features = self.episodic.features.to(self.device)
        self.queries_seen = 0
        log.info(
            "FOCT semantic memory: %d features (%d foreground) from %d support images, kernel scale %.4g",
            len(self.semantic),
            int(self.semantic.foreground.sum()),
            len(x),
            scale,
        )
        return self

    def reset_memory(self) -> None:
        """Empty the episodic memory (back to the fitted model)."""
        self.check_fitted()
        with self._lock:
            self.episodic.reset()
            self.queries_seen = 0

    def memory_bank(self) -> torch.Tensor:
        """M_t = [M^s, M^e_t] (n + L_t, C)."""
        self.check_fitted()
        return torch.cat([self.semantic.features, self.episodic.features])

    def check_fitted(self) -> None:
        if self.semantic is None:
            raise NotFittedError("the FOCT model has no semantic memory yet: call fit(support images) first")

    # ------------------------------------------------------------------ scoring
    def _query(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One query's (m, C) features -> (Eq. 8 scores (m,), pi_n against M^s (m, n))."""
        cfg, ms = self.config, self.semantic.features
        memory = torch.cat([ms, self.episodic.features])
        cost = euclidean_cost(q, memory)
        n = ms.shape[0]
        phi = fit_distance(self.distance, ms, q, cost[:, :n], cfg.steps, cfg.lr, cfg.rho)
        with torch.no_grad():
            d = phi(q, memory)
            return anomaly_scores(cost, d), forward_transport(d[:, :n])

    @torch.no_grad()
    def maps_from_features(
        self,
        features: Mapping[int, np.ndarray | torch.Tensor],
        batch_size: int = 16,
        *,
        images: torch.Tensor | None = None,
        update: bool = False,
        update_below: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (B, S, S) and image scores (B,) (CPU) from backbone features ``{stage: (B, D, H, W)}`` of B
        query images, scored one after the other in order (``batch_size`` is not used: each query is its own
        Eq. 4 problem); with ``update`` each query then calibrates the episodic memory (Eq. 6/7), unless its
        score exceeds ``update_below``; ``images`` (B, 3, S, S) are needed only by mask sources that read
        pixels (SAM).

        Raises:
            InputError: a stage is missing. NotFittedError: before :meth:`fit`.
        """
        self.check_fitted()
        self.check_features(features)
        x = self.patches(features)
        b, c, h, w = x.shape
        if update:
            with self._lock:
                fg = self.mask_source.masks(x, images).to(x.device).reshape(b, -1)
                patch, scores = self._stream(x, fg, update_below)
        else:
            patch, scores = self._stream(x, None, None)
        maps = score_maps(patch.reshape(b, h, w).cpu(), int(self.config.image_size), self.config.smoothing_sigma)
        return maps, scores.cpu()

    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The maps (B, S, S) of one batch of backbone features (memory unchanged)."""
        return self.maps_from_features(features)[0]

    def _stream(self, x: torch.Tensor, fg: torch.Tensor | None, update_below: float | None):
        cfg = self.config
        b, c = x.shape[:2]
        patch, scores = [], []
        if fg is not None:
            self.last_added = []
        for i in range(b):
            q = x[i].reshape(c, -1).t().contiguous()
            s, pi_s = self._query(q)
            patch.append(s)
            scores.append(s.max())
            if fg is None:
                continue
            idx = q.new_zeros(0, dtype=torch.long)
            if update_below is None or float(s.max()) <= float(update_below):
                idx = topk_augmentation(pi_s, fg[i], cfg.top_foreground, cfg.top_background)
                self.episodic.add(q[idx])
                self.queries_seen += 1
            self.last_added.append(idx.cpu())
        return torch.stack(patch), torch.stack(scores)

    @torch.no_grad()
    def score(
        self, images, batch_size: int = 16, *, update: bool = False, update_below: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) at ``image_size`` and image scores (B,) (max patch score, Eq. 8).

        Args:
            images: (B, 3, H, W) float in [0, 1] (or uint8), resized to ``image_size`` if needed.
            batch_size: images per backbone pass.
            update: online calibration of the episodic memory with these queries, in order (off by default).
            update_below: with ``update``, only images scoring at most this much update the memory.
        Raises:
            InputError: not RGB images. NotFittedError: before :meth:`fit`.
        """
        self.check_fitted()
        prepared = self.prepare(images)
        feats = self.features(prepared, batch_size)
        return self.maps_from_features(
            feats,
            images=prepared if self.mask_source.needs_images else None,
            update=update,
            update_below=update_below,
        )

    def describe(self) -> dict:
        """Kind, backbone, stages, image size, the ablation switches and the memory sizes."""
        c = self.config
        return {
            "kind": "foct",
            "backbone": c.backbone,
            "stages": list(c.stages),
            "image_size": int(c.image_size),
            "foreground": c.foreground,
            "distance": c.distance,
            "online": bool(c.online),
            "smoothing_sigma": float(c.smoothing_sigma),
            "semantic_size": len(self.semantic) if self.semantic is not None else 0,
            "episodic_size": len(self.episodic.features) if self.episodic is not None else 0,
        }

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """A plain dict (tensors, numbers, strings; ``torch.load(weights_only=True)`` reads it): format, config,
        memories, the fitted distance, the mask source and (by default) the backbone's weights."""
        self.check_fitted()
        return {
            "format": FOCT_FORMAT,
            "config": asdict(self.config),
            "semantic": {"features": self.semantic.features.cpu(), "foreground": self.semantic.foreground.cpu()},
            "episodic": {"features": self.episodic.features.cpu(), "compressions": self.episodic.compressions},
            "distance": {
                "kind": self.distance.kind,
                "dim": self.distance.dim,
                "hidden": self.distance.hidden,
                "state_dict": {k: v.cpu() for k, v in self.distance.state_dict().items()},
            },
            "masks": self.mask_source.spec(),
            "queries_seen": int(self.queries_seen),
            "backbone": backbone_state(self.backbone, include_backbone),
        }

    def save(self, path: str | Path, include_backbone: bool = True) -> Path:
        """One self-describing file (format ``pradot-foct-v1``), written atomically."""
        return save_state(self.state(include_backbone), path)

    @classmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu", backbone: Backbone | None = None) -> FOCT:
        """Inverse of :meth:`state`; ``backbone`` replaces the stored one."""
        cfg = dict(state["config"])
        cfg["stages"] = tuple(cfg["stages"])
        config = FOCTConfig(**cfg)
        backbone = restore_backbone(state["backbone"], backbone)
        model = cls(config, backbone=backbone, device=device)
        dev = model.device
        model.semantic = SemanticMemory(
            state["semantic"]["features"].float().to(dev), state["semantic"]["foreground"].bool()
        )
        dist = state["distance"]
        model.distance = NavigatorDistance(dist["dim"], dist["hidden"], dist["kind"], seed=config.seed)
        model.distance.load_state_dict(dist["state_dict"])
        model.distance.to(dev)
        model.episodic = EpisodicMemory(
            dist["dim"], config.capacity, config.compression, config.projection_dim, config.seed
        )
        model.episodic.features = state["episodic"]["features"].float().to(dev)
        model.episodic.compressions = int(state["episodic"].get("compressions", 0))
        model.queries_seen = int(state.get("queries_seen", 0))
        return model

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None) -> FOCT:
        """Read a :meth:`save` file. Raises FileNotFoundError / InputError (not a FOCT model file)."""
        return cls.from_state(load_state(path, FOCT_FORMAT, what="FOCT model"), device=device, backbone=backbone)
