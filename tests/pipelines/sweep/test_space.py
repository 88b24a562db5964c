"""The search space keyed by config paths (pipelines/sweep/space.py): leaves, aliases, checks, trial values."""

import pytest

from pipelines import config
from pipelines.sweep.space import ALIASES, SEARCHABLE, Dimension, SearchSpace, SweepError, alias_overrides, parse_space

CI = ["experiment=ci", "sweep=ci"]


@pytest.fixture(scope="module")
def cfg():
    return config.compose("sweep", CI)


def _space(cfg, raw):
    return parse_space(raw, cfg)


def test_the_ci_space_is_keyed_by_config_paths(cfg):
    from omegaconf import OmegaConf

    space = parse_space(OmegaConf.to_container(cfg.sweep.search_space), cfg)
    assert space.to_dict() == {
        "model.alpha": {"type": "uniform", "low": 0.0, "high": 1.0},
        "model.n": {"type": "choice", "values": [1, 2]},
        "model.eta": {"type": "uniform", "low": 0.3, "high": 0.9},
        "model.epsilon": {"type": "loguniform", "low": 0.01, "high": 0.1},
        "model.batch_ratio": {"type": "choice", "values": [4, 8]},
    }
    assert set(ALIASES.values()) == set(SEARCHABLE)


def test_short_names_are_aliases_and_null_is_not_searched(cfg):
    space = _space(
        cfg,
        {
            "alpha": {"type": "uniform", "low": 0.1, "high": 0.2},
            "stages": [[2], [3], "2+3"],
            "backbone": {"type": "const", "value": "efficientnet_lite0"},
            "eta": None,
            "model": {"n": [2.0, 4]},
            "sinkhorn_iters": 50,
        },
    )
    assert [d.path for d in space.dimensions] == [
        "model.alpha",
        "backbone.stages",
        "backbone.name",
        "model.n",
        "model.sinkhorn_iters",
    ]
    assert space.get("backbone.stages").values == ("2", "3", "2,3")  # Optuna's choices are plain values
    assert space.get("model.n").values == (2, 4)  # whole numbers kept as ints
    assert space.get("model.sinkhorn_iters") == Dimension("model.sinkhorn_iters", "const", values=(50,))
    assert space.get("model.eta") is None
    assert space.stage_sets([2]) == [(2,), (3,), (2, 3)]
    assert space.spanned("model.eta", 0.95) == [0.95] and space.spanned("model.alpha", 0) == [0.1, 0.2]


def test_trial_overrides_are_config_paths(cfg):
    space = SearchSpace(
        (
            Dimension("model.alpha", "uniform", 0.0, 1.0),
            Dimension("backbone.stages", "choice", values=("2", "2,3")),
            Dimension("model.sinkhorn_iters", "const", values=(20,)),
        )
    )
    # sampled keys: config paths, or short names (a sweep started by an earlier release)
    assert space.trial_overrides({"model.alpha": 0.4, "stages": "2,3", "other": 1}) == {
        "model.sinkhorn_iters": 20,
        "model.alpha": 0.4,
        "backbone.stages": [2, 3],
    }


def test_readme_overrides_reach_the_config_paths():
    assert alias_overrides(
        [
            "sweep.search_space.alpha=null",
            "+sweep.search_space.stages={type:choice}",
            "sweep.search_space.n.values=[16]",
            "~sweep.search_space.eta",
            "+sweep.search_space.backbone={type:choice}",
            "sweep.search_space.backbone.stages=[2]",
            "sweep.num_samples=3",
        ]
    ) == [
        "sweep.search_space.model.alpha=null",
        "+sweep.search_space.backbone.stages={type:choice}",
        "sweep.search_space.model.n.values=[16]",
        "~sweep.search_space.model.eta",
        "+sweep.search_space.backbone.name={type:choice}",
        "sweep.search_space.backbone.stages=[2]",
        "sweep.num_samples=3",
    ]
    overrides = alias_overrides(
        config.parse_overrides(
            [
                *CI,
                "sweep.search_space.alpha=null",
                "model.alpha=0",
                "+sweep.search_space.stages={type:choice,values:[[2],[3],[2,3]]}",
            ]
        )
    )
    cfg = config.compose("sweep", overrides)
    from omegaconf import OmegaConf

    space = parse_space(OmegaConf.to_container(cfg.sweep.search_space), cfg)
    assert space.get("model.alpha") is None
    assert space.get("backbone.stages").values == ("2", "3", "2,3")


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "sweep.search_space is empty: give at least one"),
        ({"model": {"alpha": None}}, "every parameter is null"),
        ({"lr": {"type": "uniform", "low": 0, "high": 1}}, "unknown parameter(s) ['lr']"),
        ({"model": {"stages": [2]}}, "unknown parameter(s) ['model.stages']"),
        ({"alpha": [0.1], "model": {"alpha": [0.2]}}, "['model.alpha'] given twice"),
        (
            {"model": {"alpha": {"type": "normal", "low": 0, "high": 1}}},
            "sweep.search_space.model.alpha: type 'normal'",
        ),
        ({"model": {"alpha": {"type": "uniform", "low": 0, "high": 1, "step": 1}}}, "unknown keys ['step']"),
        ({"model": {"alpha": {"type": "uniform", "low": 0}}}, "needs low and high"),
        ({"model": {"alpha": {"type": "uniform", "low": 0.5, "high": 0.5}}}, "low 0.5 must be < high 0.5"),
        ({"model": {"epsilon": {"type": "loguniform", "low": 0, "high": 0.1}}}, None),  # the library: epsilon > 0
        ({"model": {"eta": {"type": "loguniform", "low": 0.0, "high": 0.9}}}, "loguniform needs low > 0"),
        (
            {"model": {"alpha": {"type": "uniform", "low": 0, "high": 2}}},
            "model.alpha: 2 is out of range: it must be a number in [0, 1]",
        ),
        (
            {"model": {"eta": {"type": "choice", "values": [0.5, 1.5]}}},
            "model.eta: 1.5 is out of range: it must be a number in [0, 1]",
        ),
        ({"model": {"n": {"type": "choice", "values": [1.5]}}}, "n >= 1 must be an integer"),
        (
            {"model": {"n": {"type": "choice", "values": [0]}}},
            "model.n: 0 is out of range: it must be a number in (0, 1024]",
        ),
        (
            {"sinkhorn_iters": {"type": "int", "low": 0, "high": 10}},
            "sinkhorn_iters: 0 is out of range: it must be an integer >= 1",
        ),
        ({"batch_ratio": {"type": "choice", "values": [0.5, 2]}}, "batch_ratio: 0.5 must be >= 1"),
        ({"model": {"alpha": {"type": "choice", "values": ["x"]}}}, "model.alpha: 'x' is not a number"),
        ({"model": {"alpha": {"type": "choice", "values": []}}}, "needs a non-empty list of values"),
        ({"backbone": {"name": {"type": "choice", "values": ["vgg"]}}}, "unknown backbone 'vgg'"),
        ({"stages": {"type": "choice", "values": [[5]]}}, "sweep.search_space.stages: stages must be"),
        ({"backbone": {"stages": {"type": "uniform", "low": 2, "high": 3}}}, "use type choice (or const), not uniform"),
        ({"model": {"alpha": 0.3}}, "only constants: nothing to search"),
    ],
)
def test_bad_spaces_name_the_key(cfg, raw, message):
    with pytest.raises(SweepError) as e:
        _space(cfg, raw)
    assert message is None or message in str(e.value), str(e.value)
    assert "sweep.search_space" in str(e.value)
