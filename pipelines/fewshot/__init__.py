"""MLflow entry point `fewshot`: FOCT's few-shot protocol (reference paper foct-paper.md, section 5), tracked.

    python pipelines/fewshot.py data=mvtec_ad category=bottle          # the paper's setting (fewshot=paper)
    python pipelines/fewshot.py fewshot=cpu fewshot.ablation=true      # Table 3's rows on the synthetic data
    mlflow run . -e fewshot --env-manager local -P dataset=mpdd -P category=connector

One module per step:

* ``plan``: the settings as a typed :class:`~pipelines.fewshot.plan.FewShotPlan` (``FOCTConfig``, shots,
  splits, query order, ablation, registration), checked before anything starts.
* ``data``: the backbone features of the support pool (every image some support uses), the test split and
  the calibration normals, extracted once through the feature cache.
* ``run``: the parent run, one child run per (variant, shots, split) (``pradot.fewshot.protocol.run_split``),
  the summary over splits (metrics and tables).
* ``register``: the served few-shot model (split 0 of the largest shot count, fresh episodic memory,
  threshold calibrated on normals outside its support).
"""
