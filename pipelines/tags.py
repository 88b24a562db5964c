"""Every ``pradot.*`` tag the pipelines write on MLflow runs, logged models and registered versions: one constant per
tag, with its meaning (the way ``mlflow.utils.mlflow_tags`` names MLflow's own ``mlflow.*`` tags).

Values are strings, as MLflow stores them. Where a tag names a registered version it reads ``<name>/<version>``.
The schema of a registered version's own tags (``dataset``, ``alpha``, ``metric.<name>``, ...) is one dataclass
per model kind in :mod:`pipelines.version_tags`: their field names are the tag keys, their field types the
codec; the one ``pradot.*`` key among them is :data:`KIND`.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------ every entry run
ENTRY_POINT = "pradot.entry_point"
"""The entry point that made the run: ``main``, ``sweep``, ``sweep-trial``, ``promote``, ``baseline``,
``reproduce``, ``fewshot``, ``export`` (pipelines.tracking.entry_run writes it)."""

HOST = "pradot.host"
"""Host name of the process that owns the run (pipelines.liveness: a run of a killed process is closed)."""

PID = "pradot.pid"
"""Process id of the process that owns the run (an entry run), or that runs the trial (a sweep trial)."""

PROCESS = "pradot.process"
"""The owning process's identity beyond its PID (its start, from /proc): tells a reused PID from the owner."""

ORPHANED = "pradot.orphaned"
"""Set on a run whose process died without ending it, when a later entry run closes it as FAILED."""

NOTE = "pradot.note"
"""A free-text warning about how to read the run (e.g. hyper-parameters chosen on the test labels)."""

# ------------------------------------------------------------------------------------------ what was trained
DATASET = "pradot.dataset"
"""Dataset kind (``mvtec_loco``, ``mvtec_ad``, ``visa``, ``synthetic``, ``folder``, ...)."""

CATEGORY = "pradot.category"
"""Dataset category (``screw_bag``, ...)."""

BACKBONE = "pradot.backbone"
"""Backbone name; a sweep over several backbones lists them comma-separated."""

DEVICE = "pradot.device"
"""The torch device the run trained on (``cpu``, ``cuda:0``)."""

KIND = "pradot.kind"
"""Model kind, on runs and on registered versions: ``memory_bank``, ``ensemble`` or ``fewshot``; absent for a
PRADOT bank (versions of earlier releases have none)."""

BASELINE_KIND = "pradot.baseline_kind"
"""Which baseline a baseline run fitted: ``memory_bank`` (PatchCore-style) or ``padim`` (a Gaussian per position)."""

BELOW_BASELINE = "pradot.below_baseline"
"""``true`` on a promote run whose chosen model scores below the memory-bank baseline on the validation
objective (its summary says so in a WARNING line)."""

CATEGORIES = "pradot.categories"
"""The categories a multi-class run fitted one model on, comma-separated."""

MULTICLASS_METHOD = "pradot.multiclass.registered_method"
"""The method of the unified model a multi-class run registered (``pradot``, ``memory_bank``, ``vpdm``)."""

METHOD = "pradot.method"
"""The method of a few-shot run (``foct``)."""

FORMAT = "pradot.format"
"""The model file's format (``pradot-model-v1``, ``pradot-ensemble-v2``, ...), on the logged model."""

FEWSHOT_VARIANT = "pradot.fewshot.variant"
"""The few-shot protocol variant of a child run (Table 3 of the FOCT paper)."""

# ------------------------------------------------------------------------------------------ evidence
CALIBRATION_SOURCE = "pradot.calibration_source"
"""Which normal images the threshold was calibrated on (the calibration step's ``source``)."""

CALIBRATION_N_IMAGES = "pradot.calibration_n_images"
"""How many normal images the threshold was calibrated on."""

REFIT = "pradot.refit"
"""Set on a promote run whose chosen members were refitted on every normal after the choice (``selection.refit``;
weights, standardisation and threshold from the held-back normals' scores before the refit)."""

TEST_METRICS = "pradot.test_metrics"
"""``complete``, ``partial`` or ``skipped``: which test metrics the run could compute."""

TEST_METRICS_NOTE = "pradot.test_metrics_note"
"""Why test metrics were partial or skipped (shortened)."""

# ------------------------------------------------------------------------------------------ registry
REGISTERED = "pradot.registered"
"""The version(s) the run registered, ``<name>/<version>`` (comma-separated for a sweep)."""

REGISTRATION = "pradot.registration"
"""What became of a registration that did not happen (few-shot runs): the reason."""

REGISTERED_MODEL = "pradot.registered_model"
"""On a sweep trial's run: the registered model its bank was registered under."""

REGISTERED_VERSION = "pradot.registered_version"
"""On a sweep trial's run: the version its bank became."""

# ------------------------------------------------------------------------------------------ sweep (parent run)
SWEEP = "pradot.sweep"
"""``true`` on a sweep's parent run."""

OBJECTIVE = "pradot.objective"
"""The validation objective a sweep or promotion optimises (``pseudo``, ``test``, ...)."""

METRIC = "pradot.metric"
"""The metric a sweep ranks its trials by."""

SWEEP_NAME = "pradot.sweep_name"
"""The sweep's folder name (what ``sweep.name`` resumes)."""

SWEEP_PATH = "pradot.sweep_path"
"""Where the sweep's Tune state lives (a path or a URI)."""

SWEEP_STATE = "pradot.sweep_state"
"""``running``, ``interrupted``, ``incomplete`` (trials lost) or ``finished``."""

RESUMED = "pradot.resumed"
"""How many times the sweep was resumed."""

RESUMED_SWEEP_RUN_ID = "pradot.resumed_sweep_run_id"
"""On the run ``mlflow run`` made for a resumed sweep: the parent run that was reopened instead."""

RAY_NODES = "pradot.ray_nodes"
"""Number of Ray nodes the sweep ran on."""

RAY_ADDRESS = "pradot.ray_address"
"""The Ray cluster's address, or ``local``."""

FEATURE_STORE = "pradot.feature_store"
"""Where the trials read the extracted features from."""

LOST_TRIALS = "pradot.lost_trials"
"""Trial ids whose outcome the sweep lost (comma-separated)."""

BEST_TRIAL_ID = "pradot.best_trial_id"
"""The best trial of a finished sweep."""

BEST_RUN_ID = "pradot.best_run_id"
"""The MLflow run of the best trial."""

# ------------------------------------------------------------------------------------------ sweep (trial runs)
SWEEP_RUN_ID = "pradot.sweep_run_id"
"""The parent sweep run of a trial run."""

TRIAL_NAME = "pradot.trial_name"
"""Tune's name of the trial."""

TRIAL_ID = "pradot.trial_id"
"""Tune's id of the trial: finds the trial's run again after a restart."""

TRIAL_STATUS = "pradot.trial_status"
"""The trial's state: ``running``, ``retrying``, ``completed``, ``stopped_early`` or ``failed``."""

FAILURE = "pradot.failure"
"""Why a trial failed: ``infrastructure`` (node lost, retried) or ``error`` (the trial's own code)."""

ERROR = "pradot.error"
"""The failed trial's error text (shortened)."""

RETRY_ERRORS = "pradot.retry_errors"
"""The errors of the attempts that were retried, one per line."""

ATTEMPTS = "pradot.attempts"
"""How many times the trial started (restarts included)."""

EPOCHS_TRAINED = "pradot.epochs_trained"
"""Epochs the trial trained (ASHA may stop it early)."""

RESTORED_FROM_EPOCH = "pradot.restored_from_epoch"
"""The checkpoint epoch a restarted trial continued from."""

FEATURES = "pradot.features"
"""Cache keys of the extracted features the trial trained on (comma-separated)."""

NODE_ID = "pradot.node_id"
"""Ray node id of the worker that ran the trial."""

NODE_IP = "pradot.node_ip"
"""Address of that node."""

HOSTNAME = "pradot.hostname"
"""Host name of that node."""

# ------------------------------------------------------------------------------------------ promote, reproduce
SELECTION = "pradot.selection"
"""How promote chose its candidates: ``explicit`` (the listed members) or ``every registered version``."""

SELECTION_SPLIT = "pradot.selection_split"
"""The split the members and weights were chosen on (``validation+pseudo``: no test label)."""

MEMBERS = "pradot.members"
"""The candidates or members, ``<name>/<version>`` comma-separated."""

EXCLUDED = "pradot.excluded"
"""Candidates promote left out, with why (``; ``-separated)."""

ENSEMBLE = "pradot.ensemble"
"""The ensemble version a promotion registered, ``<name>/<version>``."""

PROMOTION = "pradot.promotion"
"""The alias decision: whether the alias moved, and why (on the run and the version)."""

BASELINE = "pradot.baseline"
"""The memory-bank baseline version a reproduction registered, ``<name>/<version>``."""

# ------------------------------------------------------------------------------------------ export
ONNX = "pradot.onnx"
"""Where the ONNX export of a version was logged (on the version and the export run)."""

ONNX_PARITY = "pradot.onnx_parity"
"""The largest absolute differences between the ONNX graph's and the pyfunc's maps and scores on the check
images (``map <x>, score <y>``)."""

OPENVINO = "pradot.openvino"
"""Where the OpenVINO IR (``.xml`` beside its ``.bin``) of a version was logged (on the version and the export
run)."""

OPENVINO_PARITY = "pradot.openvino_parity"
"""As :data:`ONNX_PARITY`, for the OpenVINO IR run by the OpenVINO runtime."""

SOURCE_MODEL = "pradot.source_model"
"""The model URI an export started from."""
