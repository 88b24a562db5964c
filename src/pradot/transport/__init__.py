"""Entropic optimal transport with uniform marginals (paper Eq. 2 and Eq. 4).

Two solvers of the same problem

    T* = argmin_{T in Pi(mu, nu)} <M, T> - eps * H(T),   mu = 1/N, nu = 1/P  (Eq. 4)

- :func:`sinkhorn_log` is the log-domain iteration the authors use (POT's ``sinkhorn_log``): each
  iteration updates the column (prototype) potential first and the row (embedding) potential second,
  so after a fixed number of iterations the row marginals are exact. It is the reference.
- :func:`sinkhorn` is the fast solver: the same iteration in the scaling domain (two matrix-vector
  products on the kernel ``K = exp((f + g - M) / eps)`` per iteration, no per-iteration log-sum-exp),
  stabilised by absorbing the scalings into log-domain potentials whenever they grow large or stop
  being finite (Schmitzer's absorption). Because the absorbed iteration is mathematically the same
  sequence of updates, it returns the same plan as :func:`sinkhorn_log` up to rounding.

Both accept torch tensors on any device; shapes are ``M: (N, P)`` (N embeddings, P prototypes).

Layout (as POT's ``ot/bregman``): :mod:`._log` (reference solver), :mod:`._scaling` (fast solver),
:mod:`._cpu` (backend choice, thread pool, kernel passes), :mod:`._kernels` (numba kernel sources),
:mod:`.profile` (where a solve's time goes), :mod:`._result` (the result type, input checks, ``<M, T>``).

References
----------
.. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", Advances in Neural
   Information Processing Systems 26, 2013 (the entropic problem and the scaling iteration).
.. [2] B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport Problems",
   SIAM Journal on Scientific Computing 41(3), A1443-A1481, 2019 (absorption of the scalings into log-domain
   potentials).
.. [3] R. Trombetta and C. Lartizien, "Learning local and global prototypes with optimal transport for
   unsupervised anomaly detection and localization", 2025 (Eq. 2 and Eq. 4 with uniform marginals).
"""

from ._cpu import NUMBA_MIN_ELEMENTS, numba_available, sinkhorn_backend
from ._log import sinkhorn_log
from ._result import SinkhornResult, transport_cost
from ._scaling import sinkhorn
from .profile import sinkhorn_profile

__all__ = [
    "NUMBA_MIN_ELEMENTS",
    "SinkhornResult",
    "numba_available",
    "sinkhorn",
    "sinkhorn_backend",
    "sinkhorn_log",
    "sinkhorn_profile",
    "transport_cost",
]
