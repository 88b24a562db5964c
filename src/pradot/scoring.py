"""Anomaly scores (paper Eq. 6), per-stage maps, upsampling and fusion.

For a test image, each embedding's score is its cost to the nearest prototype,
``S_f = min_P M(f, P)`` with ``M`` the Eq. 3 cost normalised over that image's (H*W, P) matrix
(the authors' code). Per-stage (H, W) maps are upsampled bilinearly (align_corners=True) to the
input size and averaged over stages; the image score is the max of the fused map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cost import FEATURE_NORM_EPS, spatial_cost
from .prototypes import PrototypeBank

__all__ = ["assignment_scores", "assignment_scores_reference", "stage_maps", "upsample_maps", "fuse_maps",
           "image_scores"]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(FEATURE_NORM_EPS)


def assignment_scores_reference(bank: PrototypeBank, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6, written directly (one full cost matrix per image). Slow; the test oracle.

    Args:
        feats: (B, D, H, W).
    Returns:
        scores (B, H*W) and argmin prototype indices (B, H*W).
    """
    B, _, H, W = feats.shape
    out, idx = [], []
    for b in range(B):
        z, c = bank.embeddings(feats[b:b + 1])
        M = bank.cost(z.to(bank.features.dtype), c)  # (H*W, P), Eq. 3 normalised over this image
        s, j = M.min(dim=1)
        out.append(s)
        idx.append(j)
    return torch.stack(out), torch.stack(idx)


@torch.no_grad()
def assignment_scores(bank: PrototypeBank, feats: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for a batch: ``S_i = min_j M_ij`` with M the Eq. 3 cost normalised per image.

    Batched and chunked over images; no Python loop over pixels or prototypes. Uses
    ``M = (1-a) (1 - cos) / max(1 - cos) + a Ms / max(Ms)`` with ``max(1 - cos) = 1 - min(cos)`` taken per
    image, so the only full-size work is one matrix product and one fused multiply-add + min.

    Args:
        bank: the prototypes; feats: (B, D, H, W) features of the bank's stage.
        chunk: images per chunk (bounds memory at chunk * H*W * P floats).
    Returns:
        scores (B, H*W) and argmin prototype indices (B, H*W).
    """
    B, D, H, W = feats.shape
    bank.embeddings(feats[:1])  # shape check with a clear message
    a = float(bank.config.alpha)
    pn = _unit(bank.features)  # (P, D)
    ms = spatial_cost(bank.grid_coords, bank.coords)  # (HW, P), identical for every image
    ms_max = float(ms.max())
    ms_scaled = ms * (a / ms_max) if (a > 0 and ms_max > 0) else None
    scores, index = [], []
    for s in range(0, B, chunk):
        f = feats[s:s + chunk]
        b = f.shape[0]
        zn = _unit(f.permute(0, 2, 3, 1).reshape(b, H * W, D).to(pn.dtype))  # (b, HW, D)
        cos = zn @ pn.T  # (b, HW, P)
        mf_max = (1.0 - cos.amin(dim=(1, 2))).clamp_min(0)  # (b,) max of the feature cost per image
        w_feat = torch.where(mf_max > 0, (1.0 - a) / mf_max.clamp_min(1e-12), torch.full_like(mf_max, 1.0 - a))
        if a == 1.0:
            m = ms_scaled.expand(b, -1, -1) if ms_scaled is not None else torch.zeros_like(cos)
            val, j = m.min(dim=2)
        else:
            # M = w (1 - cos) + ms_scaled = w - w cos + ms_scaled; min_j over the part that depends on j.
            cos.mul_(-w_feat[:, None, None])
            if ms_scaled is not None:
                cos.add_(ms_scaled[None])
            val, j = cos.min(dim=2)
            val = val + w_feat[:, None]
        scores.append(val)
        index.append(j)
    return torch.cat(scores), torch.cat(index)


def stage_maps(bank: PrototypeBank, feats: torch.Tensor) -> torch.Tensor:
    """Per-stage anomaly maps: (B, D, H, W) features -> (B, H, W) scores of Eq. 6."""
    B, _, H, W = feats.shape
    s, _ = assignment_scores(bank, feats)
    return s.reshape(B, H, W)


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, S, S): bilinear, align_corners=True (the authors' code)."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=True)[:, 0]


def fuse_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Average of upsampled maps of several stages (or of ensemble members): list of (B, S, S) -> (B, S, S)."""
    if not maps:
        raise ValueError("no maps to fuse")
    return torch.stack(maps).mean(0)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image-level score = max of the final map: (B, S, S) -> (B,)."""
    return maps.flatten(1).amax(1)
