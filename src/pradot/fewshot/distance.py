"""The navigators' distance ``d_phi`` of conditional transport (FOCT Eq. 2/5) and its optimisation (Eq. 4,
Adam), in plain torch.

``d_phi(x, y) = ||T_phi(x) - T_phi(y)||_2`` with a ReLU MLP feature map (FOCT 4.4.3: "we implement phi
using a ReLU-activated MLP"):

    T_phi(x) = x / sigma + W2 relu(W1 x / sigma + b1) + b2        (learned; W2, b2 start at zero)
    T(x)     = x / sigma                                           (linear: the ablation's fixed measurement)

``sigma`` puts the features in units of a normal feature's typical distance to its nearest memory item
(measured on the support when the semantic memory is built, :func:`pradot.fewshot.model.kernel_scale`), so
``exp(-d)`` is a soft nearest-neighbour kernel whatever the backbone's feature scale. The residual form starts
the learned distance at the linear one; Adam then adapts it to
each query by minimising the CT distance (Eq. 4) between the semantic memory and the query's features.
The distance is symmetric, so the forward and backward navigators share it.

Why a distance and not its square: Eq. 6 selects the query features with the largest forward transport
probability as the "most relevant to normal features". With ``exp(-||.||)`` the gaps between a feature's
distances to two memory items are bounded by the items' own spacing (triangle inequality) and are largest
when the feature nearly coincides with one item, so a peaked row of pi_n means "close to one normal
feature"; with ``exp(-||.||^2)`` the gaps grow with the distance itself, so features far from the whole
memory (anomalies) would get the most peaked rows and be selected first.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .ct import ct_cost

__all__ = ["DISTANCES", "NavigatorDistance", "fit_distance"]

#: ``learned``: the MLP map, optimised per query (Eq. 4); ``linear``: the identity map, nothing learned
DISTANCES = ("learned", "linear")


class NavigatorDistance(nn.Module):
    """``d_phi``: (m, C) queries x (n, C) memory -> (m, n) Euclidean distances in the (learned) embedding.

    Args:
        dim: feature dimension C.
        hidden: width of the MLP's hidden layer (learned only).
        kind: ``"learned"`` or ``"linear"`` (see the module docstring).
        scale: ``sigma`` (> 0), a normal feature's typical distance to the memory.
        seed: initialisation of the first layer.
    Raises:
        ValueError: unknown kind, or a non-positive dim, hidden or scale.
    """

    scale: torch.Tensor  # a buffer: sigma

    def __init__(self, dim: int, hidden: int = 256, kind: str = "learned", scale: float = 1.0, seed: int = 0):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance must be one of {list(DISTANCES)}, got {kind!r}")
        if int(dim) < 1 or int(hidden) < 1 or not float(scale) > 0:
            raise ValueError(f"dim, hidden and scale must be positive, got {dim}, {hidden}, {scale}")
        self.kind = kind
        self.dim, self.hidden = int(dim), int(hidden)
        self.register_buffer("scale", torch.tensor(float(scale)))
        if kind == "learned":
            g = torch.Generator().manual_seed(int(seed))
            self.fc1 = nn.Linear(self.dim, self.hidden)
            self.fc2 = nn.Linear(self.hidden, self.dim)
            bound = 1.0 / self.dim**0.5  # nn.Linear's default range, drawn from a seeded generator
            with torch.no_grad():
                self.fc1.weight.uniform_(-bound, bound, generator=g)
                self.fc1.bias.uniform_(-bound, bound, generator=g)
                self.fc2.weight.zero_()
                self.fc2.bias.zero_()

    @property
    def learned(self) -> bool:
        return self.kind == "learned"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """T_phi(x) for (N, C) features."""
        x = x.float() / self.scale
        if not self.learned:
            return x
        return x + self.fc2(torch.relu(self.fc1(x)))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``d[j, i] = ||T(f_j) - T(M_i)||_2`` (m, n); smoothed by 1e-6 under the root (finite gradients
        where a query coincides with a memory item)."""
        a, b = self.embed(queries), self.embed(memory)
        sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * a @ b.t()
        return (sq.clamp_min(0.0) + 1e-6).sqrt()


def fit_distance(
    base: NavigatorDistance,
    memory: torch.Tensor,
    queries: torch.Tensor,
    cost: torch.Tensor,
    steps: int = 100,
    lr: float = 1e-4,
    rho: float = 0.5,
) -> NavigatorDistance:
    """phi* for one query: a copy of ``base`` optimised with Adam to minimise the CT distance (FOCT Eq. 4)
    between ``memory`` (n, C) and ``queries`` (m, C) (``cost``: their (m, n) Euclidean costs). ``base`` is
    not changed, so every query starts from the same phi. A linear distance (or ``steps=0``) is returned
    as it is (a copy).

    Paper settings: Adam, learning rate 1e-4, 100 steps, rho = 0.5.
    """
    phi = copy.deepcopy(base)
    if not phi.learned or int(steps) <= 0:
        return phi
    memory, queries, cost = memory.detach(), queries.detach(), cost.detach()
    opt = torch.optim.Adam(phi.parameters(), lr=float(lr))
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            loss = ct_cost(cost, phi(queries, memory), rho)
            loss.backward()
            opt.step()
    return phi.eval()
