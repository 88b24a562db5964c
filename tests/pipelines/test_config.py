"""argv -> overrides -> composed config -> typed settings (pipelines/config.py)."""

import pytest

from pipelines import config, promote_settings
from pradot.engine import DataSpec
from pradot.model import PRADOTConfig


def test_parse_overrides_quotes_values_hydra_would_split_or_refuse():
    out = config.parse_overrides(
        [
            "members=a/1,b/2",
            "data_root=/x/(1)",
            "backbone.stages=[2,3]",
            "seed=",
            "--category",
            "screw_bag",
            "tracking.model_name=it's",
        ]
    )
    assert out == [
        "members='a/1,b/2'",
        "data_root='/x/(1)'",
        "backbone.stages=[2,3]",
        "category=screw_bag",
        "tracking.model_name='it\\'s'",
    ]
    cfg = config.compose("promote", out)
    assert cfg.members == "a/1,b/2" and cfg.data_root == "/x/(1)" and list(cfg.backbone.stages) == [2, 3]
    assert cfg.tracking.model_name == "it's"
    with pytest.raises(config.ConfigError, match="not a key=value"):
        config.parse_overrides(["oops"])
    with pytest.raises(config.ConfigError, match="needs a value"):
        config.parse_overrides(["--category"])


def test_each_entry_point_has_its_root_and_training_logs_only_training():
    train = config.flatten(config.compose("train", ["experiment=ci"]))
    assert "model.alpha" in train and not [k for k in train if k.startswith("sweep.")]
    sweep = config.compose("sweep", ["experiment=ci", "sweep=ci"])
    assert sweep.sweep.top_k == 2 and sweep.sweep.num_samples == 4 and sweep.model.n == 1
    # ci inherits from default: what it does not change is default's
    default = config.compose("sweep", [])
    assert sweep.sweep.pseudo_anomalies == default.sweep.pseudo_anomalies
    # the sweep ranks trials and promote chooses on one evaluation set: the same pseudo-anomalies by default
    from pipelines.sweep.plan import _pseudo

    promote = promote_settings.promote_options(config.compose("promote", []))
    assert _pseudo(default.sweep).identity() == promote.pseudo.identity()
    assert sweep.sweep.search_space.model.alpha == default.sweep.search_space.model.alpha
    reproduce = config.compose("reproduce", ["experiment=ci"])
    view = config.flatten(config.training_view(reproduce))
    assert view == train  # the members' training config is the training config, nothing else


def test_typed_settings_from_the_composed_config():
    cfg = config.compose("train", ["experiment=ci", "model.alpha=0.5", "backbone.stages=[3,2]", "data_root=/d"])
    s = config.train_settings(cfg)
    assert isinstance(s.data, DataSpec) and isinstance(s.model, PRADOTConfig)
    assert s.data.root == "/d" and s.data.kind == "synthetic" and s.model.alpha == 0.5
    assert (
        s.model.stages == (2, 3) and s.model.batch_size == 8 and s.tracking.model_name == "pradot-synthetic-screw_bag"
    )
    assert s.evaluation.n_overlays == 2 and s.cache_dir and s.fail_at_epoch is None
    member = config.with_overrides(cfg, {"backbone.stages": (2,), "model.alpha": 0.0})
    assert config.model_config(member).stages == (2,) and config.model_config(member).alpha == 0.0
    assert cfg.model.alpha == 0.5  # the original is untouched
    with pytest.raises(ValueError, match="alpha"):
        config.model_config(config.compose("train", ["model.alpha=2"]))


@pytest.mark.parametrize(
    "value, stages", [([2, 3], (2, 3)), ("2,3", (2, 3)), ("[3]", (3,)), ("2+3", (2, 3)), (2, (2,))]
)
def test_parse_stages_forms(value, stages):
    assert config.parse_stages(value) == stages


@pytest.mark.parametrize("value", ["", "x", [5], []])
def test_parse_stages_refuses(value):
    with pytest.raises(config.ConfigError, match="backbone.stages"):
        config.parse_stages(value)


def test_promote_and_reproduce_options():
    opts = promote_settings.promote_options(
        config.compose("promote", config.parse_overrides(["members=a/1,,b/2", "force=yes"]))
    )
    assert opts.members == ("a/1", "b/2") and opts.force and opts.selection_metric == "val_objective"
    assert (opts.fusion, opts.normalisation, opts.metric) == ("mean", "none", "image_auroc")  # the paper's rule
    best = promote_settings.promote_options(
        config.compose("promote", ["experiment=best"])
    )  # the recipe sets promote's keys
    assert (best.fusion, best.normalisation, best.pseudo.kinds[0]) == ("search", "per_member", "cutpaste")
    assert config.model_config(config.compose("train", ["experiment=best"])).aggregation == 3
    paper = config.model_config(config.compose("train", ["experiment=paper"]))
    assert (paper.aggregation, paper.concat_stages, paper.smoothing_sigma) == (1, False, 0.0)
    assert paper.feature_metric == "cosine"
    maha = config.model_config(config.compose("train", ["model.feature_metric=mahalanobis"]))
    assert maha.feature_metric == "mahalanobis"
    with pytest.raises(config.ConfigError, match=r"model\.feature_metric.*cosine"):
        config.model_config(config.compose("train", ["model.feature_metric=euclid"]))
    for bad, phrase in (
        ("normalisation=zscore", "per_member"),
        ("force=maybe", "true or false"),
        ("fusion=vote", "search"),
        ("selection.weight_step=0.3", "divide 1"),
        ("select_by=image_auroc", "validation metrics only"),
    ):
        with pytest.raises(config.ConfigError, match=phrase):
            promote_settings.promote_options(config.compose("promote", [bad]))
    grid = promote_settings.reproduce_grid(
        config.compose("reproduce", config.parse_overrides(["stages=3", "alphas=0,0.3"]))
    )
    assert grid.members() == [(3, 0.0), (3, 0.3)] and grid.overrides(3) == {}  # the paper: cosine everywhere
    best_grid = promote_settings.reproduce_grid(config.compose("reproduce", ["experiment=best"]))
    assert (best_grid.stages, best_grid.mahalanobis_stages) == ((2, 3), (2,))  # the recipe: stage 2 Mahalanobis
    assert best_grid.overrides(2) == {"model.feature_metric": "mahalanobis"} and best_grid.overrides(3) == {}
    assert (
        promote_settings.reproduce_grid(config.compose("reproduce", ["experiment=cpu_demo"])).mahalanobis_stages == ()
    )
    for bad, phrase in (("alphas=0,0", "duplicates"), ("stages=x", "numbers"), ("mahalanobis_stages=[4]", "grid")):
        with pytest.raises(config.ConfigError, match=phrase):
            promote_settings.reproduce_grid(config.compose("reproduce", config.parse_overrides([bad])))


@pytest.mark.parametrize(
    "root, override, suggestion",
    [
        ("train", "model.alpah=0.3", "did you mean model.alpha?"),
        (
            "sweep",
            "sweep.search_space.model.alpah={type:uniform,low:0,high:1}",
            "did you mean sweep.search_space.model.alpha",
        ),
    ],
)
def test_a_misspelt_key_gets_the_closest_existing_ones(root, override, suggestion):
    """Hydra's own hint for an unknown key is to append it with +; for a typo the existing key is the fix."""
    with pytest.raises(config.ConfigError) as e:
        config.compose(root, [override])
    assert suggestion in str(e.value)
    assert "To append to your config use +" not in str(e.value)  # Hydra's advice would train without the setting
    with pytest.raises(config.ConfigError) as e:
        config.compose("train", ["model.zzzzz=1"])
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("model.alpha=abc", r"model\.alpha=abc: Value 'abc' of type 'str' is incompatible with type hint"),
        ("data.image_size=big", r"data\.image_size=big: Value 'big' of type 'str' could not be converted to Integer"),
        ("model.warm_start=maybe", r"model\.warm_start=maybe: Value 'maybe' is not a valid bool"),
    ],
)
def test_the_groups_are_typed_at_compose(override, phrase):
    """A wrong type fails when the config is composed, with Hydra's (OmegaConf's) own message and where the
    types are."""
    with pytest.raises(config.ConfigError, match=phrase) as err:
        config.compose("train", [override])
    assert "pipelines/schema.py" in str(err.value)


def test_a_key_the_schema_does_not_have_is_refused():
    """Each group file extends its schema (its first default), so a key the schema lacks cannot be merged
    (a misspelt key in a YAML file fails at compose as an override does)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from pipelines import schema

    for node in (schema.ModelSchema, schema.BackboneSchema, schema.DataSchema):
        with pytest.raises(ConfigKeyError):
            OmegaConf.merge(OmegaConf.structured(node), {"alpah": 0.3})
    cfg = config.compose("train", ["model.n=0.25", "backbone.stages='2,3'"])  # MLproject's forms still compose
    assert (cfg.model.n, cfg.model.batch_ratio, cfg.backbone.stages) == (0.25, 4, "2,3")
    assert config.flatten(cfg)["model.batch_ratio"] == "4"  # a number written as int stays one (logged as before)
    for path in sorted(config.CONF_DIR.glob("*/*.yaml")):
        if path.parent.name in ("model", "backbone", "data"):
            first = OmegaConf.load(path).defaults[0]
            assert first.startswith(f"/schema/{path.parent.name}/") and first.endswith("@_here_"), path
