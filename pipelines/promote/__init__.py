"""MLflow entry point `promote`: build the paper's ensemble from registered banks, compare it with its
members, register it and move the ``champion`` alias to it when it beats the current champion.

Modules: ``select`` (which versions), ``compare`` (members vs ensemble on the test split), ``run`` (the
entry point: select -> compare -> calibrate -> register -> alias).

    python pipelines/promote.py category=screw_bag data=mvtec_loco [members=...] [metric=image_auroc]
        [select_by=val_auroc] [normalisation=none|per_member] [alias=champion] [force=false] [hydra overrides...]
    mlflow run . -e promote -P category=screw_bag [-P members=pradot-mvtec_loco-screw_bag/1,...]

Members:
* default: among the versions of ``pradot-<dataset>-<category>`` (``tracking.model_name``), the best one
  (by the version tag ``metric.<metric>``, else the training run's metric; ties: the newest) of each
  (stage, alpha group) with alpha group "alpha=0" (global prototypes) vs "alpha>0" (local): at most four
  members, the paper's (2, 0), (2, 0.3), (3, 0), (3, 0.3). Only **single-stage** banks (version tag
  ``stages`` with one stage) form these groups. Multi-stage banks (``stages=2,3``) are left out of the
  default selection: such a bank already averages its stages' maps, so adding it next to single-stage
  banks would count those stages twice; they are listed in the run (``pradot.excluded``) and can be used
  explicitly.
* ``select_by=<metric>``: rank the default candidates by another version metric than ``metric``, e.g.
  ``select_by=val_auroc`` for sweep-registered versions, which carry ``metric.val_auroc`` (the sweep's
  validation objective) and no test metrics. The ensemble is still compared and promoted on ``metric``.
* ``members=name/version,name/version,...`` (also ``models:/name/version`` or ``name@alias``): exactly
  these versions (a missing one is an error naming the versions that exist).

Then, in one MLflow run (tag ``pradot.entry_point=promote``): download each member's ``.pt`` from the
registry, score the validation and test splits once per member (members sharing backbone weights share
the backbone pass), fuse the maps (``pradot.ensemble``: the mean, optionally after per-member
standardisation on validation normals), compute every model's metrics on the test split with the
engine's official definitions, log the comparison (``comparison/comparison.csv`` / ``.md``), a bar chart
and overlays (members vs ensemble), calibrate the ensemble's threshold on the validation normals,
register the ensemble (one ``pradot-ensemble-v1`` file served by the same pyfunc and contract as a
single bank) as ``<model name>-ensemble`` with tags (members, metrics, ...) and move the alias when the
new version's ``metric.<metric>`` is strictly higher than the champion's (``force=true``: always). The
decision is printed and recorded as the tag ``pradot.promotion`` on the run and the new version.

The data options must be those the members were trained with (pass the same ``overrides``, e.g.
``experiment=ci``): promote checks the members' training-run parameters (dataset kind, category,
synthetic generator, validation fraction / seed) and refuses a mismatch rather than evaluating on
other data (or regenerating a synthetic dataset). Members with different image sizes are accepted: the
ensemble works at the first member's size and the other members' maps are resized (a note is logged).
"""
