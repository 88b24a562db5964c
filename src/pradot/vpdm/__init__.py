"""VPDM, the Vague Prototype-Oriented Diffusion Model (``vpdm-paper.md``): one unified model for many categories.

Modules, one concept each: :mod:`~pradot.vpdm.features` (backbone stages on one grid), :mod:`~pradot.vpdm.vpot`
(Sec. 3.1, Eq. 7-11), :mod:`~pradot.vpdm.diffusion` (Sec. 3.2, Eq. 12-15, Algorithm 2, respacing),
:mod:`~pradot.vpdm.network` (the denoiser), :mod:`~pradot.vpdm.scoring` (Sec. 3.4), :mod:`~pradot.vpdm.config`
(appendix D and the CPU recipe), :mod:`~pradot.vpdm.ablation` (Table 3's rows), :mod:`~pradot.vpdm.model`
(``VPDM``: Algorithm 1, scoring, files).
"""

from .ablation import ABLATIONS
from .config import RECIPES, VPDMConfig
from .model import VPDM, VPDM_FORMAT

__all__ = ["ABLATIONS", "RECIPES", "VPDM", "VPDM_FORMAT", "VPDMConfig"]
