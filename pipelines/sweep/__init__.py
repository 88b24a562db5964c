"""MLflow entry point `sweep`: a Ray Tune + Optuna (TPE) hyper-parameter search over PRADOT.

    python pipelines/sweep.py category=screw_bag sweep.num_samples=32            # Hydra overrides
    mlflow run . -e sweep --env-manager local -P category=screw_bag -P num_samples=32
    python pipelines/sweep.py sweep.resume=true [sweep.resume_from=.ray_results/<name>]   # finish a killed sweep

One module per step, in the order the driver runs them:

* ``space``: the search space, keyed by the training config's paths (``model.alpha``, ``backbone.stages``;
  the short names of earlier releases are aliases), checked before anything starts by building what a
  trial builds (its ``PRADOTConfig``), and turned into Tune's ``param_space``.
* ``plan``: every other sweep setting as a typed :class:`~pipelines.sweep.plan.SweepPlan` (trials,
  objective and metric, ASHA milestones, resources, pseudo-anomalies, feature store, storage, resume,
  ``top_k``), and the checks that need the dataset.
* ``cluster``: Ray (``$RAY_ADDRESS`` / ``sweep.ray.address``: an existing cluster, probed first and
  counted as several machines; else a private local one), the trials' resources, the feature store, the
  driver's tracking variables for the workers, and the tracking-store rules (MLflow's URI parsing; no
  file/SQLite store and no loopback server where trials run on other machines).
* ``storage``: the sweep's Tune folder (``sweep.storage_path``: a local folder, or a URI given to Tune
  unchanged) and the check, from every node before trials start, that it (and ``cache.dir`` for the disk
  store) is the storage the driver writes.
* ``evalset``: the evaluation set of the objective (``pseudo``: validation normals plus synthetic
  anomalies made from them, ``val_objective`` (image AUROC and AU-PRO per style, as promote chooses) or
  ``val_auroc`` (``pseudo_anomalies.localisation=false``), no test labels; ``test``: the test split's labels,
  ``test_auroc``, paper reproduction only, tagged ``pradot.objective=test``), and the backbone features
  extracted **once**, in the driver, into the memory-mapped ``pradot.features.FeatureCache`` (``cache.dir``)
  before ``Tuner.fit``. Trials read them from the cache folder (``sweep.feature_store=disk``; on several
  nodes it must be shared storage, checked from every node) or from Ray's object store (``object_store``);
  ``auto``: disk on a private local Ray, the object store on an existing cluster.
* ``trial``: one Tune function trainable per trial (``reuse_actors`` runs one trial after another in the
  same worker): the training config plus the sampled values gives the trial's ``PRADOTConfig``; a
  ``pradot.model.PrototypeModel`` (banks only, no backbone network) trains on the cached features and,
  after every epoch, scores the evaluation features and ``tune.report``s the metrics (ASHA stops the weak
  ones). It logs to its own nested MLflow run (tag ``mlflow.parentRunId``) through the tracking URI the
  driver hands it, and saves its banks in a Tune checkpoint every epoch (``sweep.checkpoint_every``) and at
  ASHA's milestones: a trial Tune restarts (a retry, ``sweep.max_failures``, or a resumed sweep) continues
  from its last one.
* ``runs``: a trial's MLflow run (created, or reopened by a new attempt) and the one set of tags that
  says where it ran and why it ended, written by the trial and, for trials whose node died, by the driver.
* ``tuner``: Tune's ``Tuner`` (built, or restored to resume; trial retries), the driver-side callback that
  tags and closes the runs of the trials Tune ends or retries.
* ``outcome``: after the trials, every trial's record (failed and never-reported ones too), their runs
  closed as Tune ended them, ``sweep/trials.csv``, and the trials lost to infrastructure.
* ``resume``: the state file in the sweep's folder and resuming from it.
* ``register``: after the sweep, the ``top_k`` banks as versions of ``pradot-<dataset>-<category>``
  (``PRADOT.from_prototypes`` attaches the real backbone; threshold calibrated on the validation normals;
  logged in each trial's run, tags :class:`pipelines.registry.VersionTags`).
* ``run``: the entry point (``run(argv) -> SweepResult``, ``main``): the parent MLflow run, the trial
  table (``sweep/trials.csv``), interruption and resume. A sweep interrupted by Ctrl+C / SIGUSR1 (or
  ``sweep.stop_after_trials``) keeps its Tune folder under ``sweep.storage_path``; so does one that lost
  trials to infrastructure (it registers nothing and exits 1 unless ``sweep.allow_lost_trials``);
  ``sweep.resume=true`` continues it with ``Tuner.restore``: finished trials are kept, unfinished and
  lost ones continue from their checkpoints, the same MLflow parent (and child runs) are reused.
"""
