"""Prototype banks: local/global prototypes of one feature stage, their initialisation and the
EMA barycentric update (paper Eq. 5).

A bank holds ``n x H x W`` prototypes ``P_k = (p_k, rho_k)`` for one stage whose feature grid is
``H x W``: features ``p: (P, D)`` and coordinates ``rho: (P, 2)``. For an integer ``n >= 1`` the
coordinates are the embedding grid repeated ``n`` times (prototype index ``k * H * W + cell``); for
``0 < n < 1`` they are a coarser cell-centred grid of ``int(H n) x int(W n)`` prototypes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .cost import feature_cost, grid_coordinates, grid_normalised_cost, normalised_cost, spatial_cost
from .transport import SinkhornResult, sinkhorn, transport_cost

__all__ = ["BankConfig", "PrototypeBank", "prototype_coordinates", "ema_update", "barycentric_coordinates", "StepStats"]


def prototype_coordinates(height: int, width: int, n: float, device=None) -> torch.Tensor:
    """Prototype coordinates on the grid: (P, 2) with P = n*H*W (n >= 1) or int(H n)*int(W n) (n < 1)."""
    if not (isinstance(n, (int, float)) and math.isfinite(n) and n > 0):
        raise ValueError(f"n (prototypes per grid cell) must be > 0, got {n!r}")
    if n >= 1:
        if float(n) != int(n):
            raise ValueError(f"n >= 1 must be an integer number of prototypes per cell, got {n!r}")
        return grid_coordinates(height, width, device=device).repeat(int(n), 1)
    h, w = int(height * n), int(width * n)
    if h < 1 or w < 1:
        raise ValueError(f"n={n} gives an empty {h}x{w} prototype grid for a {height}x{width} feature grid")
    rows = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    cols = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)


@dataclass
class BankConfig:
    """Everything that defines a bank (saved with it, so a bank file is self-describing).

    The hyper-parameters come from a :class:`pradot.model_config.PRADOTConfig`, whose checks are their one
    range check (a model file is read through it too); the bank checks only what needs its grid: that ``n``
    leaves at least one prototype on it (:func:`prototype_coordinates`)."""

    stage: int
    alpha: float
    n: float
    grid: tuple[int, int]  # (H, W) of the stage's feature map
    dim: int  # feature dimension D
    backbone: str
    image_size: int
    eta: float = 0.95
    epsilon: float = 0.01
    sinkhorn_iters: int = 100
    learn_coordinates: bool = False

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        prototype_coordinates(self.grid[0], self.grid[1], self.n)  # validates n against the grid

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BankConfig:
        return cls(**{**d, "grid": tuple(d["grid"])})


def ema_update(p: torch.Tensor, plan: torch.Tensor, z: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 5: ``p_i <- eta p_i + (1 - eta) N_p sum_k T*(k, i) z_k``.

    Args:
        p: (P, D) prototype features; plan: (N, P) transport plan T*; z: (N, D) batch embeddings.
    Returns:
        (P, D) updated prototypes (a new tensor).
    """
    n_proto = p.shape[0]
    bary = (plan.T @ z.to(plan.dtype)) * n_proto  # (P, D) barycentres of the mass each prototype got
    return eta * p + (1.0 - eta) * bary.to(p.dtype)


def barycentric_coordinates(
    rho: torch.Tensor, plan: torch.Tensor, c: torch.Tensor, eta: float, cells: int
) -> torch.Tensor:
    """Optional learnable coordinates: the EMA of Eq. 5 applied to barycentric positions, averaged over
    the prototypes that share a cell (prototype index ``k * cells + cell``).

    Args:
        rho: (P, 2); plan: (N, P); c: (N, 2); cells: number of distinct cells (H*W for n >= 1).
    Returns:
        (P, 2) updated coordinates.
    """
    n_proto = rho.shape[0]
    bary = (plan.T @ c.to(plan.dtype)) * n_proto  # (P, 2)
    bary = bary.to(rho.dtype).reshape(-1, cells, 2).mean(0).repeat(n_proto // cells, 1)
    return eta * rho + (1.0 - eta) * bary


@dataclass
class StepStats:
    ot_loss: float  # <M, T*>
    change: float  # |p_new - p| / |p|
    warm: tuple | None = field(default=None, repr=False)


class PrototypeBank(torch.nn.Module):
    """Prototypes of one stage: features ``(P, D)`` and coordinates ``(P, 2)`` (buffers)."""

    def __init__(self, config: BankConfig, seed: int | None = 0, device=None):
        super().__init__()
        self.config = config
        H, W = config.grid
        rho = prototype_coordinates(H, W, config.n, device=device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else int(seed))
        # The authors' code initialises prototype features uniform in [0, 1) (the paper says N(0, 1)).
        p = torch.rand(rho.shape[0], config.dim, generator=gen).to(device)
        self.register_buffer("features", p)  # (P, D)
        self.register_buffer("coords", rho)  # (P, 2)
        self.register_buffer("grid_coords", grid_coordinates(H, W, device=device))  # (H*W, 2)

    @property
    def n_prototypes(self) -> int:
        return int(self.features.shape[0])

    def cost(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Eq. 3 cost between any embeddings (z: (N, D), c: (N, 2)) and this bank: (N, P). Direct formula."""
        return normalised_cost(feature_cost(z, self.features), spatial_cost(c, self.coords), self.config.alpha)

    def grid_cost(self, z: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for whole images on this bank's grid (z: (B*H*W, D) from :meth:`embeddings`): (B*H*W, P).

        The same matrix as ``cost(z, c)`` (to float rounding), built in place without temporaries."""
        return grid_normalised_cost(z, self.grid_coords, self.features, self.coords, self.config.alpha)

    def embeddings(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, H, W) feature maps -> z: (B*H*W, D) and c: (B*H*W, 2), row-major per image."""
        B, D, H, W = feats.shape
        if (H, W) != tuple(self.config.grid) or D != self.config.dim:
            raise ValueError(
                f"stage {self.config.stage} features are {D}x{H}x{W}, the bank expects "
                f"{self.config.dim}x{self.config.grid[0]}x{self.config.grid[1]}: "
                f"same backbone and image size as in training?"
            )
        z = feats.permute(0, 2, 3, 1).reshape(B * H * W, D)
        c = self.grid_coords.repeat(B, 1)
        return z, c

    @torch.no_grad()
    def step(
        self, feats: torch.Tensor, warm: tuple | None = None, warm_start: bool = False, solver=sinkhorn
    ) -> StepStats:
        """One training step of Algorithm 1 on a batch: cost (Eq. 3), OT plan (Eq. 4), update (Eq. 5).

        Args:
            feats: (B, D, H, W) batch features of this stage.
        """
        z, c = self.embeddings(feats)
        z = z.to(self.features.dtype)
        M = self.grid_cost(z)  # (B*H*W, P)
        res: SinkhornResult = solver(
            M,
            self.config.epsilon,
            self.config.sinkhorn_iters,
            warm_start=warm if warm_start else None,
            return_result=True,
        )
        loss = transport_cost(M, res.plan)
        del M
        old = self.features
        new = ema_update(old, res.plan, z, self.config.eta)
        if self.config.learn_coordinates:
            cells = self.config.grid[0] * self.config.grid[1] if self.config.n >= 1 else self.n_prototypes
            self.coords.copy_(barycentric_coordinates(self.coords, res.plan, c, self.config.eta, cells))
        change = float((new - old).norm() / old.norm().clamp_min(1e-12))
        self.features.copy_(new)
        return StepStats(loss, change, (res.f.detach(), res.g.detach()))

    def state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "features": self.features.detach().cpu(),
            "coords": self.coords.detach().cpu(),
        }

    @classmethod
    def from_state(cls, state: dict, device=None) -> PrototypeBank:
        bank = cls(BankConfig.from_dict(state["config"]), seed=0, device=device)
        bank.features.copy_(state["features"].to(bank.features.device))
        bank.coords.copy_(state["coords"].to(bank.coords.device))
        return bank
