"""Min-max facility-location coresets: a subset of a feature memory that covers it (every feature close to
a chosen one), for memory banks (PatchCore's coreset subsampling) and FOCT's episodic-memory compression.

The problem (FOCT Eq. 7; Sener & Savarese 2018):

    C* = argmin_{C subset of M, |C| = k}  max_{u in M} min_{v in C} ||u - v||^2

is NP-hard; the iterative greedy approximation (farthest-point / k-center greedy, Gonzalez 1985) picks,
k times, the feature farthest from those chosen so far, and its covering radius is at most twice the
optimum. As in PatchCore and FOCT, distances may be computed after a Johnson-Lindenstrauss random
projection (``projection_dim``) to make the selection cheaper; the guarantee then holds in the projected
space.
"""

from __future__ import annotations

import torch

__all__ = ["covering_radius", "greedy_coreset", "random_projection"]


def random_projection(features: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Johnson-Lindenstrauss projection of (N, D) features to (N, dim) with a seeded Gaussian matrix scaled
    by 1/sqrt(dim) (pairwise distances preserved up to a small factor). ``dim >= D`` returns the input."""
    n, d = features.shape
    if dim >= d:
        return features
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    w = torch.randn(d, dim, generator=g, dtype=torch.float32).to(features.device, features.dtype)
    return features @ w / dim**0.5


def greedy_coreset(
    features: torch.Tensor, k: int, projection_dim: int | None = 128, seed: int = 0, start: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Indices (k,) of a greedy min-max coreset of (N, D) ``features`` (Eq. 7, iterative greedy solution).

    Args:
        features: the memory, (N, D).
        k: coreset size, 1 <= k <= N (k = N returns every index).
        projection_dim: compute distances after a random projection to this many dimensions (None: none).
        seed: the projection's seed. start: the first index chosen.
    Returns:
        LongTensor (k,) of distinct indices, in the order they were chosen.
    Raises:
        ValueError: k outside [1, N], or features not 2-D.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= int(k) <= n:
        raise ValueError(f"coreset size k must lie in [1, {n}], got {k}")
    x = features.float()
    if projection_dim is not None:
        x = random_projection(x, int(projection_dim), seed)
    chosen = torch.empty(int(k), dtype=torch.long)
    chosen[0] = int(start)
    dist = _sq_distances(x, x[int(start)], chunk)
    for i in range(1, int(k)):
        j = int(torch.argmax(dist))
        chosen[i] = j
        dist = torch.minimum(dist, _sq_distances(x, x[j], chunk))
    return chosen


def _sq_distances(x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """||x_i - y||^2 for every row of x, in chunks (no (N, D) temporary)."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s : s + chunk] = ((x[s : s + chunk] - y) ** 2).sum(1)
    return out


def covering_radius(features: torch.Tensor, indices: torch.Tensor) -> float:
    """The objective of Eq. 7 for a chosen subset: max over features of the squared distance to the nearest
    chosen feature."""
    sel = features[indices].float()
    return float(torch.cdist(features.float(), sel).pow(2).min(1).values.max())
