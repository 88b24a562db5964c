"""A per-cell covariance in PRADOT's fused cost: the feature term of Eq. 3 measured with the Mahalanobis
distance of the query's cell (PaDiM Eq. 2) instead of the cosine distance, then Eq. 6.

Why (issue 25): on near-rigid scenes a Gaussian per position (PaDiM) beats PRADOT's local prototypes on
structural image AUROC. A PaDiM cell whitens the features by the variation normal images show *there*: a
small change along a direction in which that cell never varies scores high. The cosine distance of Eq. 3
weighs every direction alike, so the same change is small next to the spread of other directions. This
module keeps PRADOT's prototypes (learnt by Algorithm 1) and its soft spatial term, and replaces only the
feature distance:

* :func:`cell_residual_covariance` (PaDiM Eq. 1 on residuals): for grid cell ``i``, the covariance of the
  training embeddings at ``i`` minus their nearest prototype among the cell's ``n`` copies, plus ``eps I``
  (PaDiM's regulariser), and its inverse ``Lambda_i``;
* :func:`mahalanobis_feature_cost`: ``Mf(i, j) = sqrt((z_i - p_j)^T Lambda_{c(i)} (z_i - p_j))``, the
  Mahalanobis distance of query ``i`` to prototype ``j`` in the query cell's metric (PaDiM Eq. 2 with the
  prototype in place of the cell mean);
* :func:`mahalanobis_scores`: Eq. 6, ``S_i = min_j (1 - a) Mf(i, j) / tau + a Ms(i, j) / max Ms`` with
  ``Ms`` the spatial term of Eq. 3; ``tau`` is either this image's ``max Mf`` (Eq. 3's per-image
  normalisation) or one fixed constant (``normaliser``: the mean of that maximum over the training images,
  :func:`training_normaliser`), which keeps image scores comparable across images.

With ``n = 1``, prototypes at the cell means and no spatial slack this is PaDiM; with ``alpha > 0`` a
query may match a prototype of a neighbouring cell at the spatial price, which is what loose parts need.
:func:`mahalanobis_scores_reference` writes the same scores directly (one quadratic form per pair), the
test oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch

from .cost import spatial_cost
from .errors import InputError, NotFittedError
from .prototypes import PrototypeBank
from .scoring import cell_copies

__all__ = [
    "cell_residual_covariance",
    "feature_cost_maxima",
    "cell_metric_map",
    "fit_cell_metrics",
    "metrics_state",
    "precision_from_moment",
    "residual_moment",
    "mahalanobis_feature_cost",
    "mahalanobis_scores",
    "mahalanobis_scores_reference",
    "prototype_quadratic",
    "training_normaliser",
]


def _buffers(bank: PrototypeBank) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bank's prototype features (P, D), coordinates (P, 2) and grid coordinates (H*W, 2)."""
    return (
        cast(torch.Tensor, bank.features),
        cast(torch.Tensor, bank.coords),
        cast(torch.Tensor, bank.grid_coords),
    )


def _cells(bank: PrototypeBank) -> int:
    n = cell_copies(bank)
    if n is None:
        raise InputError(
            "a per-cell covariance needs prototypes that are n copies of the feature grid (integer n >= 1, "
            "fixed coordinates); this bank has learnt coordinates or n < 1"
        )
    return n


def _grid_embeddings(bank: PrototypeBank, feats: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, H*W, D) float64, shape-checked against the bank."""
    B, D, H, W = feats.shape
    bank.embeddings(feats[:1])  # shape check with a clear message
    return feats.permute(0, 2, 3, 1).reshape(B, H * W, D).double()


@torch.no_grad()
def residual_moment(bank: PrototypeBank, feats: torch.Tensor) -> torch.Tensor:
    """The sum over images of ``r r^T`` per grid cell, ``r`` = embedding - nearest of the cell's ``n`` prototypes
    (the unnormalised PaDiM Eq. 1 on residuals; sums of batches add up to the whole training set's).

    Args:
        bank: a bank whose prototypes are ``n`` copies of the grid (prototype ``k * H*W + cell``).
        feats: (B, D, H, W) features of the bank's stage.
    Returns:
        (H*W, D, D) float64 on the features' device.
    Raises:
        InputError: a bank without per-cell prototypes, features of another shape.
    """
    n = _cells(bank)
    z = _grid_embeddings(bank, feats)  # (B, HW, D)
    B, HW, D = z.shape
    p = _buffers(bank)[0].double().reshape(n, HW, D).to(z.device)  # (n, HW, D)
    # squared distances by expansion (no (B, n, HW, D) difference tensor): ||p||^2 - 2 z.p (+ ||z||^2, constant)
    d2 = (p * p).sum(-1)[None] - 2.0 * torch.einsum("bid,kid->bki", z, p)  # (B, n, HW)
    k = d2.argmin(1)  # (B, HW): the nearest copy at each cell
    nearest = p[k, torch.arange(HW, device=z.device)[None].expand(B, HW)]  # (B, HW, D)
    r = z - nearest
    return torch.einsum("nid,nie->ide", r, r)


def precision_from_moment(moment: torch.Tensor, count: int, eps: float = 0.01) -> torch.Tensor:
    """PaDiM Eq. 1's regularised inverse: ``(moment / count + eps I)^-1`` per cell, by Cholesky.

    Args:
        moment: (H*W, D, D) from :func:`residual_moment` summed over ``count`` images; count >= 2; eps > 0.
    Returns:
        (H*W, D, D) float64 precisions.
    Raises:
        InputError: ``count < 2`` or ``eps <= 0``.
    """
    if int(count) < 2:
        raise InputError(f"a per-cell covariance needs at least 2 training images, got {count}")
    if not float(eps) > 0:
        raise InputError(f"eps must be > 0, got {eps!r}")
    D = moment.shape[-1]
    cov = moment.double() / int(count) + float(eps) * torch.eye(D, dtype=torch.float64, device=moment.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(cov))


@torch.no_grad()
def cell_residual_covariance(bank: PrototypeBank, feats: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """PaDiM Eq. 1 on PRADOT's residuals: per grid cell, the precision of (training embedding - nearest of the
    cell's ``n`` prototypes).

    Args:
        bank: a fitted bank whose prototypes are ``n`` copies of the grid (prototype ``k * H*W + cell``).
        feats: (N, D, H, W) training features of the bank's stage (after the model's feature options), N >= 2.
        eps: added to the covariance's diagonal (PaDiM's ``0.01 I``), > 0.
    Returns:
        (H*W, D, D) float64 precisions ``Lambda_i = (Sigma_i + eps I)^-1``, with ``Sigma_i = 1/N sum r r^T``
        (the residuals' second moment about zero: the prototypes are their centres).
    Raises:
        InputError: fewer than 2 images, ``eps <= 0``, or a bank without per-cell prototypes.
    """
    _cells(bank)
    if feats.shape[0] < 2:
        raise InputError(f"a per-cell covariance needs at least 2 training images, got {feats.shape[0]}")
    if not float(eps) > 0:
        raise InputError(f"eps must be > 0, got {eps!r}")
    return precision_from_moment(residual_moment(bank, feats), feats.shape[0], eps)


def prototype_quadratic(p: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``p_j^T Lambda_i p_j`` for every cell ``i`` and prototype ``j``: (P, D), (H*W, D, D) -> (H*W, P) float64.
    Image-independent: computed once per scoring call, a block of cells at a time (about 256 MB of doubles)."""
    p, L = p.double(), precision.double()
    block = max(1, 2**25 // (p.shape[0] * p.shape[1]))
    out = [torch.einsum("ide,je,jd->ij", L[i : i + block], p, p) for i in range(0, L.shape[0], block)]
    return torch.cat(out)


def mahalanobis_feature_cost(
    z: torch.Tensor, p: torch.Tensor, precision: torch.Tensor, quadratic: torch.Tensor | None = None
) -> torch.Tensor:
    """The feature term: ``Mf(i, j) = sqrt((z_i - p_j)^T Lambda_i (z_i - p_j))`` (PaDiM Eq. 2 in the metric
    of query ``i``'s cell, prototype ``p_j`` in place of the mean).

    Args:
        z: (B, H*W, D) embeddings of B images on the grid; p: (P, D) prototypes; precision: (H*W, D, D).
        quadratic: (H*W, P) :func:`prototype_quadratic` of ``p`` and ``precision`` when already computed.
    Returns:
        (B, H*W, P) float64 distances, computed as ``z^T L z - 2 (L z)^T p + p^T L p`` (``p^T L_i p`` for
        every cell and prototype once, then one matrix product per image), clamped at 0 before the root.
    """
    z, p, L = z.double(), p.double(), precision.double()
    Lz = torch.einsum("ide,bie->bid", L, z)  # (B, HW, D)
    zz = (Lz * z).sum(-1)  # (B, HW)
    pLp = prototype_quadratic(p, L) if quadratic is None else quadratic  # (HW, P)
    q = zz[..., None] - 2.0 * torch.einsum("bid,jd->bij", Lz, p) + pLp[None]
    return q.clamp_min(0).sqrt()


def _spatial(bank: PrototypeBank, alpha: float) -> torch.Tensor | None:
    if alpha <= 0:
        return None
    p, rho, grid = _buffers(bank)
    ms = spatial_cost(grid, rho).double()  # (HW, P), on the bank's device
    mx = float(ms.max())
    return ms * (alpha / mx) if mx > 0 else torch.zeros_like(ms)


@torch.no_grad()
def mahalanobis_scores(
    bank: PrototypeBank,
    precision: torch.Tensor,
    feats: torch.Tensor,
    normaliser: float | None = None,
    chunk: int = 8,
    quadratic: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 6 with the Mahalanobis feature term: ``S_i = min_j (1 - a) Mf(i, j) / tau + a Ms(i, j) / max Ms``.

    Args:
        bank: the prototypes (n copies of the grid) and ``alpha`` (``bank.config.alpha``).
        precision: (H*W, D, D) from :func:`cell_residual_covariance`.
        feats: (B, D, H, W) features of the bank's stage.
        normaliser: ``tau``; None: each image's ``max_ij Mf`` (Eq. 3's normalisation), else this constant
            (> 0), e.g. :func:`training_normaliser`.
        chunk: images per block (bounds memory at chunk * H*W * P doubles).
        quadratic: (H*W, P) :func:`prototype_quadratic` when already computed (None: computed here).
    Returns:
        (B, H*W) scores, float32.
    Raises:
        InputError: a bank without per-cell prototypes, a precision of another shape, ``normaliser <= 0``.
    """
    _cells(bank)
    z = _grid_embeddings(bank, feats)
    B, HW, D = z.shape
    if tuple(precision.shape) != (HW, D, D):
        raise InputError(f"precision must be (H*W, D, D) = {(HW, D, D)}, got {tuple(precision.shape)}")
    if normaliser is not None and not float(normaliser) > 0:
        raise InputError(f"normaliser must be > 0 (or None for the per-image maximum), got {normaliser!r}")
    a = float(bank.config.alpha)
    ms = _spatial(bank, a)
    out = []
    p = _buffers(bank)[0].to(z.device)
    quad = prototype_quadratic(p, precision) if quadratic is None else quadratic
    for s in range(0, B, max(1, int(chunk))):
        mf = mahalanobis_feature_cost(z[s : s + chunk], p, precision, quad)  # (b, HW, P)
        tau = mf.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12) if normaliser is None else float(normaliser)
        m = mf * ((1.0 - a) / tau)
        if ms is not None:
            m += ms[None]
        out.append(m.amin(dim=2))
    return torch.cat(out).float()


@torch.no_grad()
def feature_cost_maxima(
    bank: PrototypeBank, precision: torch.Tensor, feats: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """Eq. 3's per-image normaliser ``max_ij Mf(i, j)`` of each image. feats: (B, D, H, W); returns (B,) float64."""
    z = _grid_embeddings(bank, feats)
    p = _buffers(bank)[0].to(z.device)
    quad = prototype_quadratic(p, precision)
    return torch.cat(
        [
            mahalanobis_feature_cost(z[s : s + chunk], p, precision, quad).amax(dim=(1, 2))
            for s in range(0, z.shape[0], chunk)
        ]
    )


def training_normaliser(bank: PrototypeBank, precision: torch.Tensor, feats: torch.Tensor, chunk: int = 8) -> float:
    """The fixed ``tau`` of :func:`mahalanobis_scores`: the mean over the training images of Eq. 3's per-image
    normaliser ``max_ij Mf(i, j)``. feats: (N, D, H, W) training features."""
    return float(feature_cost_maxima(bank, precision, feats, chunk).mean())


@torch.no_grad()
def fit_cell_metrics(
    banks: Mapping[int, PrototypeBank],
    batches: Callable[[], Iterable[Mapping[int, torch.Tensor]]],
    eps: float = 0.01,
) -> dict[int, dict[str, Any]]:
    """Each bank's per-cell precisions (:func:`residual_moment`, :func:`precision_from_moment`) and fixed
    normaliser (:func:`training_normaliser`) from the training set, in two streamed passes.

    Args:
        banks: ``{stage: fitted bank}`` (n copies of the grid each).
        batches: called once per pass, yields ``{stage: (B, D, H, W)}`` features of the banks' stages that
            together cover the training set once.
        eps: PaDiM's regulariser (> 0).
    Returns:
        ``{stage: {"precision": (H*W, D, D) float32, "normaliser": float}}``; the normaliser is measured with
        the float32 precisions the model stores, so scores match a reloaded model's.
    Raises:
        InputError: fewer than 2 training images, or a bank without per-cell prototypes.
    """
    moments: dict[int, torch.Tensor] = {}
    count = 0
    for feats in batches():
        for s, bank in banks.items():
            m = residual_moment(bank, feats[s])
            moments[s] = moments[s] + m if s in moments else m
        count += int(next(iter(feats.values())).shape[0])
    precision = {s: precision_from_moment(moments.pop(s), count, eps).float() for s in banks}
    maxima: dict[int, list[torch.Tensor]] = {s: [] for s in banks}
    for feats in batches():
        for s, bank in banks.items():
            maxima[s].append(feature_cost_maxima(bank, precision[s], feats[s]))
    return {s: {"precision": precision[s], "normaliser": float(torch.cat(maxima[s]).mean())} for s in banks}


def cell_metric_map(bank: PrototypeBank, metric: dict[str, Any] | None, feats: torch.Tensor) -> torch.Tensor:
    """One bank's Eq. 6 map with its fitted metric (:func:`fit_cell_metrics`): (B, D, H, W) -> (B, H, W) float32.
    The image-independent :func:`prototype_quadratic` is kept in ``metric["quadratic"]`` after the first call
    (not saved: :func:`metrics_state` drops it).

    Raises:
        NotFittedError: no metric (the model was not fitted). InputError: :func:`mahalanobis_scores`'s errors.
    """
    if metric is None:
        raise NotFittedError("feature_metric='mahalanobis' scores with precisions fitted after training: fit first")
    B, _, H, W = feats.shape
    if "quadratic" not in metric:
        metric["quadratic"] = prototype_quadratic(_buffers(bank)[0], metric["precision"])
    out = mahalanobis_scores(bank, metric["precision"], feats, metric["normaliser"], quadratic=metric["quadratic"])
    return out.reshape(B, H, W)


def metrics_state(metrics: Mapping[Any, Mapping[str, Any]], device: str | torch.device | None = None) -> dict:
    """``{stage: {"precision": tensor, "normaliser": float}}`` as plain tensors and floats (what a model file
    stores and ``torch.load(weights_only=True)`` reads), the precisions moved to ``device`` when given."""
    return {
        int(s): {"precision": m["precision"].to(device or m["precision"].device), "normaliser": float(m["normaliser"])}
        for s, m in metrics.items()
    }


def mahalanobis_scores_reference(
    bank: PrototypeBank, precision: torch.Tensor, feats: torch.Tensor, normaliser: float | None = None
) -> torch.Tensor:
    """:func:`mahalanobis_scores` written directly: every (pixel, prototype) pair's quadratic form on its own
    difference vector (no expansion), Eq. 3's terms and the minimum. The test oracle. Returns (B, H*W) float64."""
    B, D, H, W = feats.shape
    a = float(bank.config.alpha)
    p, rho, grid = _buffers(bank)
    ms = torch.cdist(grid.double(), rho.double())  # Euclidean distance of the coordinates
    p, L = p.double(), precision.double()
    out = torch.empty(B, H * W, dtype=torch.float64)
    for b in range(B):
        z = feats[b].permute(1, 2, 0).reshape(H * W, D).double()
        diff = z[:, None, :] - p[None]  # (HW, P, D): z_i - p_j
        mf = torch.einsum("ijd,ide,ije->ij", diff, L, diff).clamp_min(0).sqrt()
        tau = float(mf.max()) if normaliser is None else float(normaliser)
        m = (1 - a) * mf / tau + (a * ms / ms.max() if a > 0 else 0.0)
        out[b] = m.min(dim=1).values
    return out
