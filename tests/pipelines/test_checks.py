"""Validation before work (pipelines/checks.py through config's builders): a bad value stops every entry point
before any MLflow run, dataset or training, with a one-line error naming the key, the value, the valid range
and the override / MLproject parameter to change it."""

import pytest

from pipelines import checks, config, promote_settings
from pipelines.checks import ConfigError


def _settings(*overrides):
    return config.train_settings(config.compose("train", config.parse_overrides(["experiment=ci", *overrides])))


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("model.epochs=0", r"model\.epochs=0 is out of range: it must be an integer >= 1 .*-P epochs=<value>"),
        ("model.epochs=1.5", r"model\.epochs=1\.5: Value '1\.5' of type 'float' could not be converted to Integer"),
        ("model.batch_ratio=0", r"model\.batch_ratio=0 is out of range: it must be a number in \(0, 1024\]"),
        ("model.batch_ratio=-3", r"model\.batch_ratio=-3 is out of range"),
        ("model.n=1e9", r"model\.n=1000000000\.0 is out of range: it must be a number in \(0, 1024\].*-P n=<value>"),
        ("model.n=0", r"model\.n=0 is out of range"),
        ("model.alpha=2", r"model\.alpha=2 is out of range: it must be a number in \[0, 1\]"),
        ("model.epsilon=0", r"model\.epsilon=0 is out of range: it must be a number > 0"),
        ("model.sinkhorn_iters=0", r"model\.sinkhorn_iters=0 is out of range"),
        ("model.eta=nan", r"model\.eta=nan is out of range"),
        (
            "calibration.quantile=2",
            r"calibration\.quantile=2 is out of range: it must be a number in \(0, 1\] .*"
            r'-P overrides="calibration\.quantile=<value>"',
        ),
        ("calibration.quantile=0", r"calibration\.quantile=0 is out of range"),
        ("evaluation.batch_size=0", r"evaluation\.batch_size=0 is out of range: it must be an integer >= 1"),
        ("evaluation.n_overlays=-1", r"evaluation\.n_overlays=-1 is out of range"),
        (
            "data.image_size=100000",
            r"data\.image_size=100000 is out of range: it must be an integer in \[16, 4096\] "
            r"\(pixels a side.*-P image_size=<value>",
        ),
        ("data.image_size=8", r"data\.image_size=8 is out of range"),
        ("data.validation_fraction=1", r"data\.validation_fraction=1 is out of range"),
        ("num_workers=-1", r"num_workers=-1 is out of range"),
        ("model.n=16", r"model settings: batch size 8 < n=16"),  # B >= n (the paper), named
        ("tracking.model_name=../../x", r"tracking\.model_name='\.\./\.\./x' cannot be a registered model name"),
        ("tracking.model_name=a:b", r"cannot be a registered model name"),
        ("category=a/b", r"category='a/b' must be one folder name .*-P category=<value>"),
        ("category=..", r"category='\.\.' must be one folder name"),
        ("category=a:b", r"tracking\.model_name='pradot-synthetic-a:b' cannot be"),  # the default name made from it
    ],
)
def test_bad_training_values_are_refused_naming_the_key(override, phrase):
    if override == "model.n=16":
        override = "model.n=16 model.batch_ratio=0.5"
    with pytest.raises(ConfigError, match=phrase):
        _settings(*override.split())


@pytest.mark.parametrize(
    "override, setting, value",
    [("model.alpha=1.5", "alpha", 1.5), ("model.eta=-1", "eta", -1), ("model.aggregation=2", "aggregation", 2)],
)
def test_the_model_configs_check_is_the_one_range_check(override, setting, value):
    """The library's message (PRADOTConfig's own check) reaches the user whole, on one line, with only the key
    and the override added by the pipelines."""
    from pradot.model import PRADOTConfig
    from pradot.ranges import SettingError

    with pytest.raises(SettingError) as lib:
        PRADOTConfig(**{setting: value})
    assert lib.value.setting == setting
    with pytest.raises(ConfigError) as err:
        _settings(override)
    key = override.split("=")[0]
    assert str(err.value) == f"{key}={value!r} {lib.value.reason}; {checks.how_to_set(key)}"
    assert "\n" not in str(err.value) and "-P " in str(err.value)


def test_good_values_pass():
    s = _settings("model.batch_ratio=0.5", "calibration.quantile=1", "data.image_size=16", "model.n=0.25")
    assert (s.model.batch_size, s.calibration_quantile, s.model.image_size, s.model.n) == (1, 1.0, 16, 0.25)


def _mlflow_accepts(action, *args) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        action(*args)
    except MlflowException:
        return False
    return True


def test_names_are_refused_where_mlflow_would_refuse_them(store):
    """MLflow's public registry API on a real store is the oracle: every name and alias it refuses, ours refuse
    before any work (and ours accept the aliases it accepts)."""
    for name in ["../x", "a/b", "a:b", ".", "..", " ", "", "ok-name", "pradot-mvtec_loco-screw_bag", "x/..", "a b"]:
        mlflow_ok = _mlflow_accepts(store.create_registered_model, name)
        try:
            checks.registry_name("tracking.model_name", name)
            ours = True
        except ConfigError:
            ours = False
        assert ours <= mlflow_ok, name
        assert ours == (name in ("ok-name", "pradot-mvtec_loco-screw_bag", "a b")), name
    store.create_registered_model("m")
    store.create_model_version("m", "file:///nowhere", run_id=None)
    for alias in ["champion", "latest", "v3", "a b", "x/y", "prod-1", ""]:
        mlflow_ok = _mlflow_accepts(store.set_registered_model_alias, "m", alias, "1")
        try:
            checks.alias_name("alias", alias)
            ours = True
        except ConfigError:
            ours = False
        assert ours == mlflow_ok, alias


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("alias=latest", r"alias='latest' cannot be a model alias.*-P alias=<value>"),
        ("ensemble_name=../up", r"ensemble_name='\.\./up' cannot be a registered model name"),
        ("calibration.quantile=5", r"calibration\.quantile=5 is out of range"),
        ("selection.pseudo_anomalies.contrast=[0,1]", r"selection\.pseudo_anomalies\.contrast must be \[min, max\]"),
    ],
)
def test_promote_options_and_settings_are_checked(override, phrase):
    cfg = config.compose("promote", config.parse_overrides(["experiment=ci", override]))
    with pytest.raises(ConfigError, match=phrase):
        config.train_settings(cfg)
        promote_settings.promote_options(cfg)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "-dash", "x;y"])
def test_sweep_name_cannot_leave_its_folder(name):
    from pipelines.sweep.plan import sweep_plan

    cfg = config.compose("sweep", config.parse_overrides(["experiment=ci", "sweep=ci", f"sweep.name={name}"]))
    with pytest.raises(ConfigError, match=r"sweep\.name=.* cannot be a folder name.*-P name=<value>"):
        sweep_plan(cfg)


def test_sweep_checks_the_training_settings_and_names():
    from pipelines.sweep.plan import sweep_plan

    for bad in ("calibration.quantile=2", "tracking.model_name=../x", "evaluation.batch_size=0"):
        cfg = config.compose("sweep", config.parse_overrides(["experiment=ci", "sweep=ci", bad]))
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            sweep_plan(cfg)


def test_every_entry_point_refuses_before_any_run(tmp_path, monkeypatch, capsys):
    from pipelines import train
    from pipelines.promote import run as promote
    from tests.helpers import tracking_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PRADOT_SYNTHETIC_ROOT", str(tmp_path / "synthetic"))
    monkeypatch.chdir(tmp_path)
    with tracking_uri(uri):
        for main, bad in (
            (train.main, "model.epochs=0"),
            (train.main, "data.image_size=100000"),
            (promote.main, "alias=v2"),
            (promote.main, "evaluation.batch_size=0"),
        ):
            assert main(["data=synthetic", "experiment=ci", bad]) == 2
            err = capsys.readouterr().err
            line = err.strip().splitlines()[0]
            assert line.startswith(f"error: {bad.split('=')[0]}=") and "Traceback" not in err, err
            assert "refused before any MLflow run started" in err
    assert not (tmp_path / "mlflow.db").exists()  # the tracking store was not even opened
    assert not (tmp_path / "synthetic").exists()  # no dataset was generated
    # under `mlflow run` its run exists before the entry point starts: the note says what happens to it
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    assert train.main(["data=synthetic", "experiment=ci", "model.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "`mlflow run` marks the run it started FAILED" in err and "before any MLflow run" not in err


def test_device_cuda_without_a_gpu_is_the_one_line_error(tmp_path, monkeypatch, capsys):
    import torch

    from pipelines import train
    from pradot.device import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device='cuda' requested but CUDA is not available"):
        _settings("device=cuda")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert train.main(["data=synthetic", "experiment=ci", "device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "error: device='cuda' requested" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_a_batch_larger_than_the_training_set_is_refused_before_features(tmp_path, monkeypatch, capsys):
    from pipelines import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    rc = train.main(
        [
            "data=synthetic",
            "experiment=ci",
            f"data.root={tmp_path}/synthetic",
            f"cache.dir={tmp_path}/c",
            "model.n=4",
            "model.batch_ratio=8",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "error: the batch size 32 (model.n=4) is larger than the 16 training images" in err, err
    assert not list((tmp_path / "c").glob("*/stage*.npy"))  # no feature was extracted


def test_list_settings_arrive_as_lists_or_as_text():
    from omegaconf import OmegaConf

    from pipelines.checks import list_items

    assert list_items([1, 2]) == [1, 2] and list_items(OmegaConf.create([2, 3])) == [2, 3]
    assert list_items("1,2,4") == ["1", "2", "4"] and list_items("[0.0, 0.3]") == ["0.0", " 0.3"]
    assert list_items("") == [] and list_items("[]") == []
