"""``VPDM``: the Vague Prototype-Oriented Diffusion Model (``vpdm-paper.md``) as a scoring model of the project.

One unified model for many categories: :meth:`VPDM.fit_features` takes the training features of every
category at once (no class label anywhere), :meth:`VPDM.score` takes images of any of them.

```python
from pradot.vpdm import VPDM, VPDMConfig
model = VPDM(VPDMConfig.recipe("cpu"))
model.fit_features(features)          # {stage: (N, D, H, W)} backbone features of the normal images
maps, scores = model.score(images)    # (B, S, S), (B,) at config.image_size
model.save("vpdm.pt"); VPDM.load("vpdm.pt")   # format pradot-vpdm-v1, read by persistence.load_scoring_model
```

``VPDM`` is a :class:`pradot.base.FeatureModel` (``KIND = "vpdm"``, ``FORMAT = "pradot-vpdm-v1"``); its image
score is Sec. 3.4's max of the ``score_pool``-pooled map rather than the contract's plain max. Ensembles do not
take it as a member (:data:`pradot.ensemble.MEMBER_CLASSES`) and ONNX export refuses it (no export head).

Training is Algorithm 1 (Eq. 17: the denoising loss plus the OT loss of Eq. 11, Adam on the prototypes and the
network); scoring is Algorithm 2 from ``N(y_hat, I)`` (or, with ``start_step`` t0 < T, from the image's own
``x^t0`` of Eq. 14) with a respaced schedule of ``sampling_steps`` steps and the map of Sec. 3.4. The noise
prediction is the network's output plus the Gaussian pass-through of :meth:`VPDM.eps` (``eps_skip``).
Sampling noise is drawn per image from a generator seeded with ``config.seed``, so an image's score does not
depend on the other images of its batch and repeats exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pradot.backbone import Backbone, backbone_state, load_backbone, restore_backbone
from pradot.base import FeatureModel
from pradot.errors import InputError

from .config import VPDMConfig
from .diffusion import NoiseSchedule, q_sample, sample
from .features import grid_features, stage_channels
from .network import Denoiser
from .scoring import anomaly_map, image_map, image_score
from .vpot import cost_matrix, low_pass_downsample, nearest_plan, ot_loss, upsample, vague_condition, vague_plan

__all__ = ["VPDM", "VPDM_FORMAT"]

log = logging.getLogger(__name__)

#: a VPDM model file (``VPDM.save``)
VPDM_FORMAT = "pradot-vpdm-v1"


class VPDM(nn.Module, FeatureModel):
    """Frozen backbone, vague prototypes ``beta`` (K, C) and the denoiser ``eps_theta`` (module docstring); a
    :class:`pradot.base.FeatureModel`: ``score(images) -> (maps, scores)``, ``image_size``, ``prepare``,
    ``fit``/``fit_features``, ``maps_from_features``, ``maps_from_backbone``, ``describe``,
    ``state``/``from_state``, ``save``/``load`` (``save(path, include_backbone=False)``,
    ``load(path, device, backbone=...)``).

    Raises:
        InputError: the backbone's stages differ from ``config.stages``.
    """

    KIND = "vpdm"
    FORMAT = VPDM_FORMAT

    mean: torch.Tensor  # (C,) feature means of the training set (buffers)
    std: torch.Tensor  # (C,) feature standard deviations
    low: torch.Tensor  # (C,) per-channel minimum of the standardised training features (the x^0 clamp)
    high: torch.Tensor  # (C,) per-channel maximum

    def __init__(self, config: VPDMConfig, backbone: Backbone | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.stages)
        if tuple(self.backbone.stages) != tuple(config.stages):
            raise InputError(f"backbone stages {self.backbone.stages} != config stages {config.stages}")
        self.channels = stage_channels(self.backbone.channels, config.stages)
        self.prototypes = nn.Parameter(torch.zeros(config.n_prototypes, self.channels))
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on config.seed only
            torch.manual_seed(int(config.seed))
            self.denoiser = Denoiser(self.channels, config.width, config.blocks)
        self.register_buffer("mean", torch.zeros(self.channels))
        self.register_buffer("std", torch.ones(self.channels))
        self.register_buffer("low", torch.full((self.channels,), -float("inf")))
        self.register_buffer("high", torch.full((self.channels,), float("inf")))
        self.schedule = NoiseSchedule.linear(config.timesteps, config.beta_start, config.beta_end)
        self.history: list[dict] = []  # per epoch: loss, eps loss, OT loss, seconds
        self.fitted = False
        self.to(self.device)

    # ------------------------------------------------------------------ features
    def grid(self, features: Mapping[int, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Backbone features ``{stage: (B, D, H, W)}`` -> standardised grid features ``x^0`` (B, C, g, g)."""
        x = grid_features(features, self.config.stages, self.config.grid).to(self.device)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    # ------------------------------------------------------------------ VPOT (Sec. 3.1)
    def condition(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vague condition ``y_hat`` (B, C, g, g) of grid features ``x0`` and the mean OT loss (Eq. 11) of the
        batch: low-pass downsampling (none when ``config.low_pass`` is off: Table 3's "without the vague
        process"), the plan to the prototypes (``config.condition``), Eq. 10, upsampling."""
        c = self.config
        down = low_pass_downsample(x0, c.downsample) if c.low_pass else x0
        B, C, h, w = down.shape
        if c.condition == "low_pass":
            return upsample(down, (x0.shape[-2], x0.shape[-1])), x0.new_zeros(())
        points = down.flatten(2).transpose(1, 2)  # (B, K_f, C)
        ys, losses = [], []
        for b in range(B):
            cost = cost_matrix(points[b], self.prototypes)
            plan = vague_plan(cost, c.ot_eps, c.ot_iter) if c.condition == "ot" else nearest_plan(cost.detach())
            ys.append(vague_condition(plan, self.prototypes))
            losses.append(ot_loss(plan, cost, c.ot_eps))
        y = torch.stack(ys).transpose(1, 2).reshape(B, C, h, w)
        return upsample(y, (x0.shape[-2], x0.shape[-1])), torch.stack(losses).mean()

    def _process_condition(self, y_hat: torch.Tensor) -> torch.Tensor:
        return y_hat if self.config.endpoint == "vague" else torch.zeros_like(y_hat)

    def eps(self, xt: torch.Tensor, y_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x^t, y_hat, t)`` (B, C, g, g): the network's output plus, with ``config.eps_skip``, the
        noise that Eq. 14 implies when ``x^0 ~ N(y_hat, I)`` (unit-variance features around the condition):
        ``E[eps | x^t] = sqrt(1 - alpha^t) (x^t - y_hat)`` (Gaussian posterior mean; the same role as the skip
        of Karras et al. 2022's preconditioning). The network then learns only the residual; without the skip
        it must learn this pass-through itself, and on the cpu recipe it did not (issue 22: at t >= 400 the
        skip alone has an eps loss <= 0.2, the trained network 0.75)."""
        out = self.denoiser(xt, y_hat, t)
        if not self.config.eps_skip:
            return out
        a = self.schedule.alpha.to(xt)[t.long() - 1].reshape(-1, 1, 1, 1)
        return out + torch.sqrt(1.0 - a) * (xt - self._process_condition(y_hat))

    # ------------------------------------------------------------------ training (Algorithm 1)
    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Eq. 17 on a batch of grid features ``x0`` (B, C, g, g): ``{"loss", "eps", "ot"}`` where ``eps`` is the
        denoising loss ``||eps - eps_theta(x^t, y_hat, t)||^2`` (DDPM's simplified form of Eq. 16's KL terms,
        Ho et al. 2020 Eq. 14) with ``x^t`` drawn by Eq. 14, and ``ot`` the OT loss of Eq. 11."""
        y_hat, l_ot = self.condition(x0)
        B = x0.shape[0]
        t = torch.randint(1, self.config.timesteps + 1, (B,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        alpha = self.schedule.alpha.to(x0)[t - 1]
        xt = q_sample(x0, self._process_condition(y_hat), alpha, noise)
        l_eps = F.mse_loss(self.eps(xt, y_hat, t.to(x0.device)), noise)
        return {"loss": l_eps + self.config.ot_weight * l_ot, "eps": l_eps, "ot": l_ot}

    def _standardisation(self, features, n: int, chunk: int) -> None:
        """Per-channel mean and standard deviation (when ``standardise``), then the per-channel range of the
        standardised training features (the clamp of Algorithm 2's ``x^0`` estimate)."""
        stages, grid = self.config.stages, self.config.grid

        def batches():
            for i in range(0, n, chunk):
                yield grid_features({s: features[s][i : i + chunk] for s in stages}, stages, grid)

        if self.config.standardise:
            s1 = torch.zeros(self.channels, dtype=torch.float64)
            s2 = torch.zeros(self.channels, dtype=torch.float64)
            count = 0
            for x in batches():
                x = x.double().transpose(0, 1).reshape(self.channels, -1)
                s1 += x.sum(1)
                s2 += (x * x).sum(1)
                count += x.shape[1]
            mean = s1 / count
            std = (s2 / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
            self.mean.copy_(mean.float())
            self.std.copy_(std.float())
        low = torch.full((self.channels,), float("inf"))
        high = torch.full((self.channels,), -float("inf"))
        for x in batches():
            z = ((x.to(self.device) - self.mean[:, None, None]) / self.std[:, None, None]).transpose(0, 1).flatten(1)
            low = torch.minimum(low, z.amin(1).cpu())
            high = torch.maximum(high, z.amax(1).cpu())
        self.low.copy_(low)
        self.high.copy_(high)

    def _init_prototypes(self, features, n: int, generator: torch.Generator) -> None:
        """Prototypes drawn from the training images' downsampled features (full-grid ones without ``low_pass``;
        the paper initialises them at random; starting on the data spares the OT loss the first epochs of
        travel)."""
        idx = torch.randperm(n, generator=generator)[: min(n, 256)].sort().values.numpy()
        x = self.grid({s: np.asarray(features[s][idx]) for s in self.config.stages})
        down = low_pass_downsample(x, self.config.downsample) if self.config.low_pass else x
        pts = down.flatten(2).transpose(1, 2).reshape(-1, self.channels)
        pick = torch.randint(len(pts), (self.config.n_prototypes,), generator=generator)
        with torch.no_grad():
            self.prototypes.copy_(
                pts[pick] + 0.01 * torch.randn(pick.shape[0], self.channels, generator=generator).to(pts)
            )

    def fit_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], chunk: int = 64, progress: bool = True
    ) -> VPDM:
        """Train on backbone features ``{stage: (N, D, H, W)}`` (arrays, memmaps or tensors) of the normal
        training images of every category: per-channel statistics, prototype initialisation, then
        ``config.epochs`` epochs of Algorithm 1 (Adam, ``config.lr``, shuffled batches of ``config.batch_size``).

        Returns:
            ``self``, fitted; ``history`` holds one row per epoch (loss, eps, ot, epoch, seconds).
        Raises:
            InputError: a stage is missing, the stages disagree on the image count, or there is no image.
        """
        c = self.config
        n = self.check_features(features)
        if n == 0:
            raise InputError("the training set is empty: VPDM needs at least one normal image")
        gen = torch.Generator().manual_seed(int(c.seed))
        torch.manual_seed(int(c.seed))
        self._standardisation(features, n, chunk)
        self._init_prototypes(features, n, gen)
        opt = torch.optim.Adam([self.prototypes, *self.denoiser.parameters()], lr=c.lr)
        self.train()
        self.history = []
        for epoch in range(int(c.epochs)):
            start, sums, batches = time.perf_counter(), {"loss": 0.0, "eps": 0.0, "ot": 0.0}, 0
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, c.batch_size):
                idx = order[i : i + c.batch_size].sort().values.numpy()
                x0 = self.grid({s: np.asarray(features[s][idx]) for s in c.stages})
                losses = self.training_loss(x0, gen)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                opt.step()
                for k in sums:
                    sums[k] += float(losses[k].detach())
                batches += 1
            row = {k: v / batches for k, v in sums.items()} | {
                "epoch": epoch + 1,
                "seconds": time.perf_counter() - start,
            }
            self.history.append(row)
            if progress:
                log.info(
                    "VPDM epoch %d/%d: loss %.4f (eps %.4f, OT %.4f)",
                    epoch + 1,
                    c.epochs,
                    row["loss"],
                    row["eps"],
                    row["ot"],
                )
        self.eval()
        self.fitted = True
        return self

    # ------------------------------------------------------------------ scoring (Algorithm 2, Sec. 3.4)
    def _noise(self, batch: int, draw: int = 0):
        gens = [torch.Generator().manual_seed(int(self.config.seed) + int(draw)) for _ in range(batch)]
        return lambda shape: torch.stack([torch.randn(shape[1:], generator=g) for g in gens])

    @torch.no_grad()
    def reconstruct(
        self, x0: torch.Tensor, steps: int | None = None, draw: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 2 on grid features ``x0`` (B, C, g, g): ``(x^0_rec, y_hat)``, with ``steps`` sampling steps
        (default ``config.sampling_steps``) of the respaced schedule; ``draw`` k seeds the noise with
        ``config.seed + k``.

        Raises:
            NotFittedError: the model is not fitted."""
        self.check_fitted()
        y_hat, _ = self.condition(x0)
        schedule = self.schedule.respaced(steps or self.config.sampling_steps)
        clip = (self.low[:, None, None], self.high[:, None, None]) if self.config.clip_x0 else None
        noise, yp, x_start = self._noise(len(x0), draw), self._process_condition(y_hat), None
        start = int(self.config.start_step or self.config.timesteps)
        if start < self.config.timesteps:  # Eq. 14 from the image's own x^0 at the last kept step <= start
            keep = schedule.timesteps <= start
            keep[0] = True  # at least the first step
            schedule = NoiseSchedule(schedule.betas[keep], schedule.timesteps[keep])
            x_start = q_sample(x0, yp, float(schedule.alpha[-1]), noise(tuple(x0.shape)).to(x0))
        rec = sample(self.eps, y_hat, schedule, noise, self.config.sigma, yp, clip_x0=clip, x_start=x_start)
        return rec, y_hat

    @torch.no_grad()
    def maps_from_grid(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Anomaly maps (B, S, S) of grid features ``x0``: Sec. 3.4's ``||x^0 - x^0_rec||_2`` up-sampled, averaged
        over ``config.n_draws`` reconstructions (noise seeds ``seed``, ``seed + 1``, ...)."""
        S = torch.stack([anomaly_map(x0, self.reconstruct(x0, steps, k)[0]) for k in range(int(self.config.n_draws))])
        return image_map(S.mean(0).cpu(), self.config.image_size, self.config.smoothing_sigma)

    @torch.no_grad()
    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The maps (B, S, S) from this model's backbone features (an ensemble's shared backbone pass)."""
        return self.maps_from_grid(self.grid(features))

    @torch.no_grad()
    def maps_from_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], batch_size: int = 16, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (B, S, S) float32 (CPU) and image scores (B,) (Sec. 3.4: max of the ``score_pool``-pooled map)
        from precomputed backbone features ``{stage: (B, D, H, W)}`` (e.g. the cache), ``batch_size`` images at a
        time, with ``steps`` sampling steps (default ``config.sampling_steps``).

        Raises:
            InputError: a stage is missing or the stages differ in image count. NotFittedError: not fitted.
        """
        n = self.check_features(features)
        self.check_fitted()
        S = self.image_size
        out = [
            self.maps_from_grid(self.grid({s: features[s][i : i + batch_size] for s in self.config.stages}), steps)
            for i in range(0, n, batch_size)
        ]
        maps = torch.cat(out) if out else torch.zeros(0, S, S)
        return maps, image_score(maps, self.config.score_pool)

    @torch.no_grad()
    def score(self, images, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) float32 (CPU) at ``image_size`` and image scores (B,) (Sec. 3.4: max of the
        ``score_pool``-pooled map) of (B, 3, H, W) images (float in [0, 1] or uint8, resized if needed).

        Raises:
            InputError: not RGB images. NotFittedError: the model is not fitted.
        """
        self.check_fitted()
        _, feats = self.backbone_features(images, batch_size)
        S = self.image_size
        maps = torch.cat([self.maps_from_backbone(f) for f in feats]) if feats else torch.zeros(0, S, S)
        return maps, image_score(maps, self.config.score_pool)

    @torch.no_grad()
    def explain(self, images) -> dict[str, torch.Tensor]:
        """What the paper's Fig. 2 and 3 show, for (B, 3, H, W) images (float in [0, 1] or uint8): ``x0`` the
        standardised grid features (B, C, g, g), ``f_down`` the low-passed ones (B, C, g/N, g/N; ``x0`` without
        ``low_pass``), ``y_hat`` the vague condition (B, C, g, g), ``reconstruction`` Algorithm 2's ``x^0_rec``
        (the first noise draw; B, C, g, g) and ``maps`` (B, S, S), the anomaly maps of :meth:`score`. All on CPU.

        Raises:
            InputError: not RGB images. NotFittedError: the model is not fitted.
        """
        self.check_fitted()
        _, feats = self.backbone_features(images)
        x0 = torch.cat([self.grid(f) for f in feats])
        rec, y_hat = self.reconstruct(x0)
        f_down = low_pass_downsample(x0, self.config.downsample) if self.config.low_pass else x0
        out = {"x0": x0, "f_down": f_down, "y_hat": y_hat, "reconstruction": rec, "maps": self.maps_from_grid(x0)}
        return {k: v.detach().cpu() for k, v in out.items()}

    def describe(self) -> dict:
        """What an ensemble or a registry records of this model."""
        c = self.config
        return {
            "kind": self.KIND,
            "backbone": c.backbone,
            "stages": list(c.stages),
            "image_size": int(c.image_size),
            "channels": int(self.channels),
            "n_prototypes": int(c.n_prototypes),
            "sampling_steps": int(c.sampling_steps),
            "parameters": int(sum(p.numel() for p in self.denoiser.parameters())) + int(self.prototypes.numel()),
        }

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """The dict :meth:`save` writes: format, config, prototypes, network weights, feature statistics,
        the training history and (by default) the backbone's weights."""
        cfg = asdict(self.config)
        cfg["stages"] = list(self.config.stages)
        return {
            "format": self.FORMAT,
            "config": cfg,
            "fitted": self.fitted,
            "prototypes": self.prototypes.detach().cpu().contiguous(),
            "denoiser": {k: v.detach().cpu() for k, v in self.denoiser.state_dict().items()},
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "low": self.low.cpu(),
            "high": self.high.cpu(),
            "history": [dict(r) for r in self.history],
            "backbone": backbone_state(self.backbone, include_backbone),
        }

    @classmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu", backbone: Backbone | None = None) -> VPDM:
        """Inverse of :meth:`state`; ``backbone`` replaces the stored one (e.g. a shared network)."""
        cfg = dict(state["config"])
        cfg["stages"] = tuple(cfg["stages"])
        cfg.setdefault("eps_skip", False)  # files written before the option existed
        cfg.setdefault("low_pass", True)
        model = cls(VPDMConfig(**cfg), backbone=restore_backbone(state["backbone"], backbone), device=device)
        with torch.no_grad():
            model.prototypes.copy_(torch.as_tensor(state["prototypes"]))
            model.mean.copy_(torch.as_tensor(state["mean"]))
            model.std.copy_(torch.as_tensor(state["std"]))
            model.low.copy_(torch.as_tensor(state["low"]))
            model.high.copy_(torch.as_tensor(state["high"]))
        model.denoiser.load_state_dict(dict(state["denoiser"]))
        model.history = [dict(r) for r in state.get("history", [])]
        model.fitted = bool(state.get("fitted", True))
        return model.eval()
