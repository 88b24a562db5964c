"""Few-shot anomaly detection with FOCT (foreground-aware online conditional transport; reference paper
``foct-paper.md``): a handful of normal images as a semantic memory, a learnable conditional transport to
score each query, and an online episodic memory calibrated by the query stream.

| module | owns | paper |
|---|---|---|
| ``ct`` | cost, forward/backward transport matrices, CT distance, anomaly scores | Eq. 1/4, 2/5, 8 |
| ``distance`` | the navigators' distance d_phi (ReLU MLP or linear) and its Adam optimisation | Eq. 4, sec. 4.4.3 |
| ``memory`` | foreground split, semantic memory, Top-K augmentation, coreset compression, episodic memory | Eq. 3, 6, 7 |
| ``foreground`` | pluggable foreground masks: ``border`` (offline default), ``none``, ``sam`` | sec. 4.1 |
| ``patches`` | patch features from backbone stages, score maps (bilinear + Gaussian) | sec. 4.1, 4.3 |
| ``model`` | ``FOCTConfig``, ``FOCT`` (fit / score / state, format ``pradot-foct-v1``) | Fig. 1, 4 |
| ``protocol`` | support splits, query orders, ablation variants, metrics and summary of the few-shot protocol | sec. 5 |
"""

from .model import FOCT, FOCT_FORMAT, FOCTConfig

__all__ = ["FOCT", "FOCT_FORMAT", "FOCTConfig"]
