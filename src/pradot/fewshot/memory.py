"""FOCT's memories: the foreground-aware semantic memory built from the support images (section 4.1) and
the online episodic memory calibrated with the query images (section 4.2).

* :func:`split_foreground`    Eq. 3: support features split by the foreground masks
* :func:`semantic_memory`     M^s = [coreset_alpha(fore), coreset_beta(back)] (ratios alpha, beta)
* :func:`topk_augmentation`   Eq. 6: the query features most relevant to the normal memory
* :func:`compress`            Eq. 7: greedy min-max coreset of the episodic memory (via :mod:`pradot.coreset`)
* :class:`EpisodicMemory`     M^e_t: augmentation, and compression to lambda L when it reaches capacity L

Subsampling the foreground and background features "according to different downsampling ratios" uses the
same greedy min-max coreset as the compression (PatchCore's coreset subsampling), so the memory covers
the support's features rather than a random part of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..coreset import greedy_coreset

__all__ = [
    "SemanticMemory",
    "split_foreground",
    "subsample",
    "semantic_memory",
    "topk_augmentation",
    "compress",
    "EpisodicMemory",
]


def split_foreground(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background features of the support images (FOCT Eq. 3):
    ``f^fore = fla(f * m)``, ``f^back = fla(f * (1 - m))`` (the features where the mask is on / off).

    Args:
        features: (k, C, h, w) support patch features; masks: (k, h, w) bool foreground masks.
    Returns:
        ``(fore (N_f, C), back (N_b, C))`` with ``N_f + N_b = k h w``.
    Raises:
        ValueError: the mask grid differs from the feature grid.
    """
    k, c, h, w = features.shape
    if tuple(masks.shape) != (k, h, w):
        raise ValueError(f"masks {tuple(masks.shape)} do not match the feature grid {(k, h, w)}")
    flat = features.permute(0, 2, 3, 1).reshape(-1, c)
    m = masks.reshape(-1).bool()
    return flat[m], flat[~m]


def subsample(features: torch.Tensor, ratio: float, projection_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """``round(ratio * N)`` (at least 1) of (N, C) features chosen by the greedy min-max coreset;
    an empty input stays empty.

    Raises:
        ValueError: ratio outside (0, 1].
    """
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"a subsampling ratio must lie in (0, 1], got {ratio!r}")
    n = features.shape[0]
    if n == 0:
        return features
    k = min(n, max(1, int(round(float(ratio) * n))))
    return features[greedy_coreset(features, k, projection_dim=projection_dim, seed=seed)]


@dataclass
class SemanticMemory:
    """M^s (n, C) with the side each item came from (``foreground`` (n,) bool)."""

    features: torch.Tensor
    foreground: torch.Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])


def semantic_memory(
    features: torch.Tensor,
    masks: torch.Tensor,
    foreground_ratio: float = 0.10,
    background_ratio: float = 0.075,
    projection_dim: int | None = 128,
    seed: int = 0,
) -> SemanticMemory:
    """The foreground-aware semantic memory (FOCT section 4.1): Eq. 3, then the foreground features
    subsampled at ``foreground_ratio`` (alpha, paper 10 %) and the background at ``background_ratio``
    (beta, paper 7.5 %), concatenated. With all-foreground masks this is plain coreset subsampling at alpha
    (the OCT ablation).

    Args:
        features: (k, C, h, w) support patch features; masks: (k, h, w) bool.
    Returns:
        :class:`SemanticMemory`.
    """
    fore, back = split_foreground(features, masks)
    fore = subsample(fore, foreground_ratio, projection_dim, seed)
    back = subsample(back, background_ratio, projection_dim, seed)
    flags = torch.cat([torch.ones(len(fore), dtype=torch.bool), torch.zeros(len(back), dtype=torch.bool)])
    return SemanticMemory(torch.cat([fore, back]).float().contiguous(), flags)


def topk_augmentation(
    pi_n: torch.Tensor, foreground: torch.Tensor, k_foreground: int = 10, k_background: int = 40
) -> torch.Tensor:
    """Indices of the query features that augment the episodic memory (FOCT Eq. 6):
    ``idx = TopK(max_i pi_n(M_i | f_j))``, the query features with the largest transport probability to
    one memory item (those most relevant to the normal features), ``k_foreground`` from the query's
    foreground and ``k_background`` from its background (paper: 10 and 40). When one side has fewer
    features than its share, the rest of the budget goes to the other side (so without foreground masks
    all ``k_foreground + k_background`` come from the whole image).

    Args:
        pi_n: (m, n) forward transport matrix of the query against the semantic memory (Eq. 5).
        foreground: (m,) bool foreground flags of the query features.
    Returns:
        LongTensor of at most ``k_foreground + k_background`` distinct query indices, by decreasing
        relevance within each side.
    """
    if pi_n.ndim != 2 or foreground.shape != (pi_n.shape[0],):
        raise ValueError(f"pi_n must be (m, n) and foreground (m,), got {tuple(pi_n.shape)}, {tuple(foreground.shape)}")
    relevance = pi_n.max(dim=1).values
    fg = torch.nonzero(foreground.bool(), as_tuple=True)[0]
    bg = torch.nonzero(~foreground.bool(), as_tuple=True)[0]
    kf, kb = min(int(k_foreground), len(fg)), min(int(k_background), len(bg))
    spare_f, spare_b = int(k_foreground) - kf, int(k_background) - kb  # budget a side cannot use
    kf, kb = min(len(fg), kf + spare_b), min(len(bg), kb + spare_f)

    def top(candidates: torch.Tensor, k: int) -> torch.Tensor:
        if k <= 0:
            return candidates[:0]
        order = torch.topk(relevance[candidates], k).indices
        return candidates[order]

    return torch.cat([top(fg, kf), top(bg, kb)])


def compress(episodic: torch.Tensor, size: int, projection_dim: int | None = 128, seed: int = 0) -> torch.Tensor:
    """The compressed episodic memory (FOCT Eq. 7): the ``size`` features of the greedy min-max
    (facility-location) coreset of ``episodic`` (L_t, C), distances computed after a Johnson-Lindenstrauss
    random projection to ``projection_dim`` dimensions (:func:`pradot.coreset.greedy_coreset`)."""
    size = min(int(size), episodic.shape[0])
    if size < 1:
        return episodic[:0]
    return episodic[greedy_coreset(episodic, size, projection_dim=projection_dim, seed=seed)]


class EpisodicMemory:
    """M^e_t (section 4.2): starts empty; :meth:`add` appends the Top-K query features (augmentation) and,
    when the memory reaches its capacity ``L``, compresses it to ``round(compression x L)`` features (Eq. 7).
    Between queries it never holds ``capacity`` features or more.

    Args:
        dim: feature dimension. capacity: L (paper: 100). compression: lambda in (0, 1) (paper: 0.25).
    Raises:
        ValueError: capacity < 1 or compression outside (0, 1).
    """

    def __init__(
        self, dim: int, capacity: int = 100, compression: float = 0.25, projection_dim: int | None = 128, seed: int = 0
    ):
        if int(capacity) < 1:
            raise ValueError(f"the episodic memory's capacity L must be >= 1, got {capacity!r}")
        if not 0.0 < float(compression) < 1.0:
            raise ValueError(f"the compression ratio lambda must lie in (0, 1), got {compression!r}")
        self.capacity, self.compression = int(capacity), float(compression)
        self.projection_dim, self.seed = projection_dim, int(seed)
        self.features = torch.zeros(0, int(dim))
        self.compressions = 0

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def compressed_size(self) -> int:
        return max(1, int(round(self.compression * self.capacity)))

    def add(self, delta: torch.Tensor) -> None:
        """M^e_t = [M^e_{t-1}, delta] (Eq. 6's Delta M^e_t, (K, C)); compressed when it reaches capacity."""
        self.features = torch.cat([self.features, delta.detach().to(self.features)])
        if len(self) >= self.capacity:
            self.features = compress(
                self.features, self.compressed_size, self.projection_dim, self.seed + self.compressions
            ).contiguous()
            self.compressions += 1

    def reset(self) -> None:
        self.features = self.features[:0]
        self.compressions = 0
