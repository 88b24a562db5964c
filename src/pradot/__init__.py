"""PRADOT: prototype-based anomaly detection with optimal transport (Trombetta & Lartizien, 2025).

Library modules follow the paper: :mod:`pradot.cost` (Eq. 1/3), :mod:`pradot.transport` (Eq. 2/4),
:mod:`pradot.prototypes` (Eq. 5), :mod:`pradot.scoring` (Eq. 6), :mod:`pradot.model` (Algorithm 1).
"""

__version__ = "0.1.0"

from .model import PRADOT, PRADOTConfig  # noqa: E402

__all__ = ["PRADOT", "PRADOTConfig", "__version__"]
