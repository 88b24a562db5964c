"""The fused feature/spatial cost between embeddings and prototypes (paper Eq. 1 and Eq. 3).

Embeddings are ``f = (z, c)`` with features ``z: (N, D)`` and grid coordinates ``c: (N, 2)``;
prototypes are ``P = (p, rho)`` with ``p: (P, D)`` and ``rho: (P, 2)``. All functions return ``(N, P)``.

Zero-norm features (e.g. an all-black image region after ReLU) have no direction: their cosine with
anything is defined as 0, i.e. feature cost 1 (never NaN).

``alpha`` lies in [0, 1]: :class:`pradot.model_config.PRADOTConfig` checks it, once, for every bank (these
functions run per batch and per image and do not check it again).
"""

from __future__ import annotations

import torch

from .buffers import empty_matrix

__all__ = [
    "FEATURE_NORM_EPS",
    "feature_cost",
    "spatial_cost",
    "fused_cost",
    "normalised_cost",
    "grid_normalised_cost",
    "grid_coordinates",
]

#: below this L2 norm a feature vector counts as zero (its cosine with anything is 0)
FEATURE_NORM_EPS = 1e-8


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows stay zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(FEATURE_NORM_EPS)


def feature_cost(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Feature part of Eq. 1: ``M_feat(i, j) = 1 - <z_i, p_j> / (|z_i| |p_j|)``.

    Args:
        z: (N, D) embedding features; p: (P, D) prototype features.
    Returns:
        (N, P) cosine distances in [0, 2].
    """
    if z.shape[-1] != p.shape[-1]:
        raise ValueError(f"feature dimensions differ: embeddings {z.shape[-1]}, prototypes {p.shape[-1]}")
    return 1.0 - _unit(z) @ _unit(p).T


def spatial_cost(c: torch.Tensor, rho: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Spatial part of Eq. 1 / Eq. 3: distance between grid coordinates.

    The authors' code uses the plain Euclidean distance (``squared=False``, the default); the paper's
    Eq. 1 writes it squared (``squared=True``).

    Args:
        c: (N, 2) embedding coordinates; rho: (P, 2) prototype coordinates.
    Returns:
        (N, P) distances.
    """
    # cdist without the matrix-product shortcut: exact, and no (N, P, 2) temporary
    d = torch.cdist(c, rho.to(c.dtype), compute_mode="donot_use_mm_for_euclid_dist")
    return d.square_() if squared else d


def fused_cost(z, c, p, rho, alpha: float, squared: bool = True) -> torch.Tensor:
    """Eq. 1: ``C(f, P) = (1 - alpha) (1 - cos(z, p)) + alpha |c - rho|^2`` (unnormalised).

    Kept for reference and for the UMAP figure (the paper's Fig. 6 uses cost (1) as the metric).
    Training and scoring use :func:`normalised_cost` (Eq. 3), as the authors' code does.
    Returns (N, P).
    """
    a = float(alpha)
    return (1.0 - a) * feature_cost(z, p) + a * spatial_cost(c, rho, squared=squared)


def _max_normalised(m: torch.Tensor) -> torch.Tensor:
    peak = m.max()
    return m / peak if float(peak) > 0 else m


def normalised_cost(m_feat: torch.Tensor, m_struct: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 3: ``M = (1 - alpha) M_feat / max(M_feat) + alpha M_struct / max(M_struct)``.

    The maxima are taken over the matrix at hand (a training batch, or one test image). A term whose
    maximum is 0 (all embeddings on their prototypes' coordinates, or identical features) is used
    as is (all zeros) instead of dividing by zero.

    Args:
        m_feat: (N, P) feature cost; m_struct: (N, P) spatial cost; alpha in [0, 1].
    Returns:
        (N, P) cost in [0, 1].
    """
    a = float(alpha)
    if a == 0.0:
        return _max_normalised(m_feat)
    if a == 1.0:
        return _max_normalised(m_struct)
    return (1.0 - a) * _max_normalised(m_feat) + a * _max_normalised(m_struct)


#: rows of the cost matrix built per block by :func:`grid_normalised_cost` (whole images at a time)
BUILD_BLOCK_ELEMENTS = 1 << 22


def grid_normalised_cost(
    z: torch.Tensor, grid_c: torch.Tensor, p: torch.Tensor, rho: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Eq. 3 for a batch of whole images on one feature grid, built in place.

    The same matrix as ``normalised_cost(feature_cost(z, p), spatial_cost(c, rho), alpha)`` with
    ``c = grid_c.repeat(B, 1)`` (equal up to float rounding; the test oracle), without its temporaries:
    the feature cost goes straight into the output block by block, and the spatial term, which is the same for
    every image, is computed once as an ``(H*W, P)`` matrix and added image by image. At the paper's
    scale (50,176 x 12,544) the direct formula needs about 7.5 GB of temporaries on top of the 2.5 GB
    output; this needs the output and one ``(H*W, P)`` term. On a 2-core CPU it is ~5x faster
    (12,544 x 3,136: 0.18 s vs 0.9 s).

    Args:
        z: (B*H*W, D) embedding features, image-major (row ``b*H*W + cell``, as
            :meth:`PrototypeBank.embeddings` lays them out).
        grid_c: (H*W, 2) coordinates of one image's cells.
        p: (P, D) prototype features; rho: (P, 2) prototype coordinates.
    Returns:
        (B*H*W, P) cost in [0, 1].
    """
    a = float(alpha)
    if z.shape[-1] != p.shape[-1]:
        raise ValueError(f"feature dimensions differ: embeddings {z.shape[-1]}, prototypes {p.shape[-1]}")
    HW, N, P = grid_c.shape[0], z.shape[0], p.shape[0]
    if HW == 0 or N % HW:
        raise ValueError(f"{N} embedding rows are not whole images of {HW} cells each")
    B = N // HW
    out = empty_matrix((N, P), p.dtype, p.device)  # huge pages on CPU: fewer first-touch faults
    M3 = out.view(B, HW, P)
    step = max(1, BUILD_BLOCK_ELEMENTS // max(1, HW * P))  # images per block
    if a < 1.0:
        zn, pnT = _unit(z.to(p.dtype)), _unit(p).T.contiguous()
        block_max = []
        for s in range(0, B, step):  # pass 1: feature cost 1 - cos, and each block's maximum
            blk = out[s * HW : (s + step) * HW]
            torch.matmul(zn[s * HW : (s + step) * HW], pnT, out=blk)
            block_max.append(blk.neg_().add_(1.0).amax())
        mf_max = float(torch.stack(block_max).max())  # one host sync
        wf = (1.0 - a) / mf_max if mf_max > 0 else 1.0 - a
    if a > 0.0:
        ms = spatial_cost(grid_c.to(p.dtype), rho.to(p.dtype))  # (H*W, P), the same for every image
        ms_max = float(ms.max())
        ms.mul_(a / ms_max if ms_max > 0 else a)
    if a == 1.0:
        return M3.copy_(ms.expand(B, HW, P)).view(N, P)
    # pass 2: M = wf Mf + ws Ms (scaled, then added: no cancellation when max(Mf) is tiny)
    for s in range(0, B, step):
        if a > 0.0:
            M3[s : s + step].mul_(wf).add_(ms)
        else:
            M3[s : s + step].mul_(wf)
    return out


def grid_coordinates(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Embedding coordinates: ``linspace(0, 1, H) x linspace(0, 1, W)`` (row, col), row-major: (H*W, 2)."""
    rows = torch.linspace(0, 1, height, device=device, dtype=dtype)
    cols = torch.linspace(0, 1, width, device=device, dtype=dtype)
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)
