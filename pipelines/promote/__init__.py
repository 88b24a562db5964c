"""MLflow entry point `promote`: build an ensemble from registered banks (and the memory-bank baseline), chosen
without test labels, compare it with its candidates, register it and move the ``champion`` alias to it when it
beats the current champion on the validation objective.

Modules: ``select`` (which versions are candidates), ``choose`` (the label-free choice on the validation
objective), ``compare`` (candidates vs ensemble on the test split, after the choice), ``run`` (the entry point:
select -> choose -> compare -> calibrate -> register -> alias).

    python pipelines/promote.py category=screw_bag data=mvtec_loco [members=...] [fusion=mean|search]
        [normalisation=none|per_member] [select_by=val_objective] [alias=champion] [force=false] [hydra overrides...]
    mlflow run . -e promote -P category=screw_bag [-P fusion=search] [-P members=pradot-mvtec_loco-screw_bag/1,...]

**Nothing is chosen on the test split.** Every choice is made on the validation objective
(``pipelines.objective``): the validation normals plus pseudo-anomalies of both styles made from them
(``pradot.data.pseudo_anomalies``: cut-paste, noise, blotch = structural; shuffled tiles, moved patches =
logical), scored by image AUROC and AU-PRO@0.05 on the pseudo-anomaly masks per style, combined into
``val_objective`` (the mean over styles of their average; ``pradot.metrics.pseudo``). Data without a validation
split use the training images as normals (said in the tags). Test metrics are computed after the choice, for the
comparison table only; shuffling the test labels changes the table, not the choice (a test checks it).

Candidates:
* default: every registered version of ``pradot-<dataset>-<category>`` (``tracking.model_name``; ensembles
  excluded) and the newest registered memory-bank baseline ``<model name>-baseline`` (``-e baseline``). When no
  baseline is registered, promote fits one on the training features (``conf/memory_bank``; seconds, no
  training) so that the comparison table always has the baseline's row; it is said in the row's label and in
  the run's ``promote.baseline`` param. Promote scores every candidate on the evaluation set and keeps the best
  per group (PRADOT banks by stage(s) and alpha = 0 vs alpha > 0; memory banks by stages).
* ``select_by=<val_* tag>``: per group, of the versions with such a tag (e.g. ``val_objective`` of
  sweep-registered versions) only the best is scored; versions without it stay candidates. Test metrics are
  refused here. The summary warns when the chosen model is below the memory-bank baseline on the objective.
* ``members=name/version,...`` (also ``models:/name/version`` or ``name@alias``): exactly these candidates (a
  missing one is an error naming the versions that exist); the baseline stays a row (and a candidate under
  ``fusion=search``).

Fusion:
* ``fusion=mean`` (the default, the paper's rule): the group winners that are single-stage PRADOT banks (at most
  the paper's four: (2, 0), (2, 0.3), (3, 0), (3, 0.3)) or the given members, averaged; optionally standardised
  per member on the validation normals (``normalisation=per_member``).
* ``fusion=search`` (``experiment=best``): the members and their weights chosen among the group winners and the
  baseline on a weight grid (``selection.weight_step``) by ``val_objective`` (``pradot.fusion.choose_fusion``); a
  single model is a valid answer.

Then, in one MLflow run (tag ``pradot.entry_point=promote``): ``comparison/choice.json`` (every candidate's
validation metrics, the winners, the members, weights and normalisation statistics), the test-split comparison
(``comparison/comparison.csv`` / ``.md``: the validation objective, then the test metrics of every group winner,
the baseline and the ensemble), a bar chart and overlays; the threshold calibrated on the validation normals'
fused scores; the ensemble registered (one ``pradot-ensemble-v2`` file: members, weights, statistics, served by
the same pyfunc and contract as a single bank) as ``<model name>-ensemble`` with tags (members, weights,
member kinds, ``fusion``, ``selection_split``, ``selection_metric``, validation and test metrics); and the alias
moved when the new version's ``val_objective`` is strictly higher than the champion's, **re-scored now on the
same evaluation set** (its tag when it cannot be loaded; ``force=true``: always). Test numbers are reported for
information. The decision is printed and recorded as the tag ``pradot.promotion`` on the run and the new version.

The data options must be those the members were trained with (pass the same ``overrides``, e.g.
``experiment=ci``): promote checks the members' training-run parameters (dataset kind, category,
synthetic generator, validation fraction / seed) and refuses a mismatch rather than evaluating on
other data (or regenerating a synthetic dataset). Candidates at another image size than ``data.image_size``
are left out (named members: refused), since fused maps must share one grid.
"""
