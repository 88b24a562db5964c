"""The registry in one place (pipelines/registry.py): version tags written and read by one type, atomic
registration, incomplete versions, the alias rule. On a tmp SQLite store, in this process."""

import dataclasses
import math

import pytest

from pipelines import registry, tracking
from pipelines.registry import BankTags, EnsembleTags, VersionTags


def test_version_tags_round_trip_for_banks_sweeps_and_ensembles():
    bank = BankTags(
        dataset="d",
        category="c",
        run_id="r",
        threshold=0.5,
        backbone="b",
        stages=(2, 3),
        image_size=96,
        alpha=0.3,
        n=4,
        eta=0.9,
        epsilon=0.01,
        batch_size=16,
        epochs=2,
        metrics={"image_auroc": 0.912345678},
    )
    tags = bank.to_tags()
    assert tags["stages"] == "2,3" and tags["alpha"] == "0.3" and tags["metric.image_auroc"] == "0.91235"
    assert "members" not in tags and "sweep_rank" not in tags and "pradot.kind" not in tags  # unset: not written
    back = VersionTags.from_tags(tags)
    assert back == dataclasses.replace(bank, metrics={"image_auroc": 0.91235})
    sweep = bank.with_updates(
        sweep_run_id="p",
        sweep_rank=1,
        trial_id="t1",
        objective="pseudo",
        batch_ratio=4.0,
        epochs_trained=2,
        calibration_source="validation",
    )
    assert VersionTags.from_tags(sweep.to_tags()).sweep_rank == 1
    ens = EnsembleTags(
        members=("m/1", "m/2"),
        member_stages=((2,), (3,)),
        member_alphas=(0.0, 0.3),
        normalisation="none",
        selection="explicit",
        stages=(2, 3),
    )
    t = ens.to_tags()
    assert t["pradot.kind"] == "ensemble" and t["n_members"] == "2" and t["member_stages"] == "2;3"
    assert VersionTags.from_tags(t) == ens


#: every common field away from its default (values a tag holds exactly: metrics with 5 decimals)
_COMMON = dict(
    dataset="mvtec_loco",
    category="screw_bag",
    run_id="r1",
    threshold=0.123456789,
    backbone="wide_resnet50_2",
    stages=(2, 3),
    image_size=256,
    metrics={"image_auroc": 0.91235, "pixel_au_spro": 0.5},
    config={"model.alpha": 0.3, "model.n": 16, "backbone": "wide_resnet50_2"},
    calibration_source="validation",
    calibration_n_images=32,
    test_metrics="partial",
    test_metrics_note="no masks: pixel metrics skipped",
    objective="pseudo",
    selection="explicit",
    selection_metric="val_objective",
    selection_split="validation+pseudo",
)
#: every field of each kind away from its default (the sweep score with 6 decimals)
_OWN = {
    registry.BankTags: dict(
        alpha=0.3,
        n=16.0,
        eta=0.9,
        epsilon=0.05,
        batch_size=8,
        epochs=40,
        aggregation=3,
        smoothing_sigma=4.0,
        feature_metric="mahalanobis",
        sweep_run_id="p1",
        sweep_rank=2,
        trial_id="t_00003",
        batch_ratio=4.0,
        epochs_trained=12,
        sweep_metric="val_objective",
        sweep_score=0.812345,
    ),
    registry.MemoryBankTags: dict(aggregation=3, smoothing_sigma=4.0, coreset_ratio=0.1),
    registry.PaDiMTags: dict(
        aggregation=1, smoothing_sigma=4.0, coreset_ratio=1.0, covariance="oas", eps=0.5, n_channels=7
    ),
    registry.EnsembleTags: dict(
        members=("m/1", "m/2", "m-baseline/1"),
        normalisation="zscore",
        member_stages=((2,), (2, 3), (3,)),
        member_alphas=(0.0, 0.3, 1 / 3),
        fusion="search",
        member_weights=(0.5, 0.25, 0.25),
        member_kinds=("bank", "bank", "memory_bank"),
    ),
    registry.FewShotTags: dict(shots=4, support_split=1, support=("good/000.png", "good/007.png")),
    registry.VPDMTags: {},
}


@pytest.mark.parametrize("record", list(_OWN), ids=lambda r: r.__name__)
def test_version_tags_round_trip_whole_records_of_every_kind(record):
    """Every field of every kind's record survives the round trip: the whole record comes back, of its own
    class, member_stages and member_alphas included (a field the codec forgot would differ)."""
    full = record(**_COMMON, **_OWN[record])
    empty = record()
    unset = [f.name for f in dataclasses.fields(record) if getattr(full, f.name) == getattr(empty, f.name)]
    assert unset == [], unset  # the test sets every field
    tags = full.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    back = VersionTags.from_tags(tags)
    assert type(back) is record and back == full
    assert ("pradot.kind" in tags) == (record is not registry.BankTags)
    assert ("n_members" in tags) == (record is registry.EnsembleTags)
    assert (tags.get("member_stages"), tags.get("val_objective")) == (
        ("2;2,3;3", None)
        if record is registry.EnsembleTags
        else (None, "0.812345")
        if record is BankTags
        else (None, None)
    )
    assert set(registry.RECORDS) == set(registry.KINDS) == {"bank", "memory_bank", "ensemble", "fewshot", "vpdm"}


def test_versions_registered_before_the_per_kind_records_read_and_write_the_same():
    """Tags the one 44-field record wrote (stored: tests/pipelines/data/version_tags_before_split.json, one
    realistic version per registering entry point) read as the record of their kind, and that record writes
    the same tags again (an n written from an int reads back as a float: "16" -> "16.0")."""
    import json
    from pathlib import Path

    stored = json.loads((Path(__file__).parent / "data" / "version_tags_before_split.json").read_text())["versions"]
    expected = {
        "train_bank": BankTags,
        "sweep_bank": BankTags,
        "multiclass_bank": BankTags,
        "baseline_memory_bank": registry.MemoryBankTags,
        "baseline_padim": registry.PaDiMTags,
        "promote_ensemble": EnsembleTags,
        "fewshot": registry.FewShotTags,
    }
    assert set(stored) == set(expected)
    for name, tags in stored.items():
        record = VersionTags.from_tags(tags)
        assert type(record) is expected[name], name
        again = record.to_tags()
        assert set(again) == set(tags) and VersionTags.from_tags(again).to_tags() == again, name  # same keys
        assert {k: v for k, v in again.items() if v != tags[k]} in ({}, {"n": "16.0"}), name  # an int n: "16"
    ens = VersionTags.from_tags(stored["promote_ensemble"])
    assert ens.member_stages == ((2,), (2, 3), (3,)) and math.isnan(ens.member_alphas[2])
    assert VersionTags.from_tags(stored["sweep_bank"]).sweep_score == 0.812345


def test_version_tags_keep_a_memory_bank_members_missing_alpha_and_read_an_unknown_kind_as_a_bank():
    ens = EnsembleTags(members=("m/1", "b/1"), member_alphas=(0.3, float("nan")))
    back = VersionTags.from_tags(ens.to_tags())
    assert back.member_alphas[0] == 0.3 and back.member_alphas[1] != back.member_alphas[1]  # nan
    with pytest.raises(TypeError, match="common part"):
        VersionTags()
    assert VersionTags.from_tags({"pradot.kind": "something-new", "alpha": "0.5"}) == BankTags(alpha=0.5)
    assert registry.PaDiMTags(eps=0.1).to_tags()["config"] == '{"baseline": "padim"}'  # a memory bank to promote
    assert registry.PaDiMTags().kind == "memory_bank" and registry.VPDMTags().to_tags() == {"pradot.kind": "vpdm"}


def test_every_pradot_tag_of_the_pipelines_is_named_once_in_tags_py():
    """No ``"pradot.*"`` literal outside pipelines/tags.py (mlflow_model.py, which imports only pradot, keeps
    its one: the same string as tags.FORMAT); every constant has its own value and a docstring."""
    import ast
    import re
    from pathlib import Path

    from pipelines import tags

    root = Path(tags.__file__).parent
    source = (root / "tags.py").read_text()
    names = {}
    docs = {}
    body = ast.parse(source).body
    for node, after in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names[node.targets[0].id] = node.value.value
            docs[node.targets[0].id] = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    assert len(set(names.values())) == len(names) > 40
    assert all(v.startswith("pradot.") for v in names.values())
    assert all(docs.values()), [n for n, d in docs.items() if not d]
    literal = re.compile(r"[\"'](pradot\.[a-z_.]+)[\"']")
    outside = {}
    for path in sorted(root.rglob("*.py")):
        if path.name == "tags.py":
            continue
        found = literal.findall(path.read_text())
        if path.name == "mlflow_model.py":
            assert set(found) <= {tags.FORMAT}, found
        elif found:
            outside[str(path.relative_to(root))] = found
    assert not outside, f"use the constants of pipelines/tags.py: {outside}"


def test_version_tags_read_versions_of_earlier_releases():
    old = {
        "alpha": "0",
        "n": "16",
        "stages": "[2]",
        "backbone": "resnet50",
        "metric.image_auroc": "0.8",
        "metric.bad": "n/a",
        "threshold": "nan",
        "pradot.format": "pradot-model-v1",
        "val_auroc": "0.7",
    }
    t = VersionTags.from_tags(old)
    assert (t.alpha, t.n, t.stages, t.backbone) == (0.0, 16.0, (2,), "resnet50")
    assert t.metrics == {"image_auroc": 0.8} and t.threshold is None and t.kind == "bank"


def test_decide_alias_moves_only_on_a_strictly_better_metric(store):
    store.create_registered_model("m")
    run = store.create_run(store.get_experiment_by_name("e").experiment_id)
    for metric in (0.8, 0.7, 0.9, 0.9):
        v = store.create_model_version("m", "file:///x", run_id=run.info.run_id)
        store.set_model_version_tag("m", v.version, "metric.image_auroc", str(metric))
    first = registry.decide_alias(store, "m", "1", "champion", "image_auroc", 0.8)
    assert first.moved and first.previous is None and "first champion" in first.reason
    worse = registry.decide_alias(store, "m", "2", "champion", "image_auroc", 0.7)
    assert not worse.moved and worse.previous == "1" and worse.reason.startswith("kept:")
    better = registry.decide_alias(store, "m", "3", "champion", "image_auroc", 0.9)
    assert better.moved and str(store.get_model_version_by_alias("m", "champion").version) == "3"
    tie = registry.decide_alias(store, "m", "4", "champion", "image_auroc", 0.9)
    assert not tie.moved
    forced = registry.decide_alias(store, "m", "4", "champion", "image_auroc", 0.9, force=True)
    assert forced.moved and "force=true" in forced.reason
    assert str(store.get_model_version_by_alias("m", "champion").version) == "4"


def test_registration_is_one_call_after_the_run_with_every_tag(store, tmp_path, tiny_backbone, monkeypatch):
    """The version is created after its run FINISHED, with every VersionTags tag in the creating call: no
    tag is set afterwards (a crash can leave no half-tagged version, nor a version of an unfinished run)."""
    from mlflow import MlflowClient

    from pradot import PRADOT, PRADOTConfig
    from pradot.serving import Calibration

    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    path = PRADOT(cfg, backbone=tiny_backbone).save(tmp_path / "m.pt")

    def no_later_tags(*args, **kwargs):
        raise AssertionError("a version tag was set after the version was created")

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", no_later_tags)
    with registry.registration("atomic"):
        assert store.get_registered_model("atomic").name == "atomic"  # claimed before the work
        with tracking.entry_run("r", "e", entry_point="main") as run:
            tags = BankTags(
                dataset="d",
                category="c",
                run_id=run.run_id,
                threshold=0.5,
                stages=(2,),
                alpha=0.3,
                metrics={"image_auroc": 0.9},
            )
            uri = registry.log_model(path, Calibration(0.5, 0.0, 1.0, 0.99, 3), tags)
        assert store.search_model_versions("name='atomic'") == []  # nothing registered while the run ran
        version = registry.register(uri, "atomic", tags)
    v = store.get_model_version("atomic", version)
    assert v.status == "READY" and v.run_id == run.run_id
    assert {k: v.tags[k] for k in tags.to_tags()} == tags.to_tags() and v.tags["pradot.format"] == "pradot-model-v1"
    r = store.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.info.end_time <= v.creation_timestamp
    assert r.data.tags["pradot.registered"] == f"atomic/{version}"
    assert registry.incomplete(store, v) is None


def test_a_version_of_an_unfinished_run_is_incomplete(store):
    store.create_registered_model("half")
    run = store.create_run(store.get_experiment_by_name("e").experiment_id)
    v = store.create_model_version("half", "file:///x", run_id=run.info.run_id, tags={"dataset": "d"})
    assert "is RUNNING, not FINISHED" in registry.incomplete(store, v)
    store.set_terminated(run.info.run_id, "FAILED")  # what the orphan sweep makes of a killed run
    assert "is FAILED" in registry.incomplete(store, store.get_model_version("half", v.version))


def test_a_failed_run_leaves_nothing_in_the_registry(store):
    with pytest.raises(ZeroDivisionError):
        with registry.registration("new"):
            assert store.get_registered_model("new")
            raise ZeroDivisionError
    assert store.search_registered_models() == []  # created for the run, removed with it
    store.create_registered_model("old")
    with pytest.raises(ZeroDivisionError):
        with registry.registration("old"):
            raise ZeroDivisionError
    assert [m.name for m in store.search_registered_models()] == ["old"]  # not ours: kept
    with registry.registration("old"), registry.registration(None):
        pass
    with pytest.raises(ValueError, match="registry refuses the registered model name 'a/b'"):
        with registry.registration("a/b"):
            pass


def test_overlapping_promotions_end_on_the_best_and_the_loser_says_why(store):
    """Two alias decisions that overlap (the holder's re-scoring takes a while): serialised per registered
    model, the alias ends on the best candidate whatever the finishing order, and the other is kept out with
    a reason that names the holder it lost to. Oracle: the candidates' own values."""
    import threading
    import time

    from mlflow import MlflowClient

    value = {"1": 0.5, "2": 0.9, "3": 0.8}
    store.create_registered_model("m")
    run = store.create_run(store.get_experiment_by_name("e").experiment_id)
    for _ in value:
        store.create_model_version("m", "file:///x", run_id=run.info.run_id)
    store.set_registered_model_alias("m", "champion", "1")
    inside, overlap = [], []

    def holder_value(champ):
        inside.append(1)
        overlap.append(len(inside))
        time.sleep(0.5)  # the re-scoring: the window in which the other promotion starts
        inside.pop()
        return value[str(champ.version)]

    out = {}

    def promote(version, delay):
        time.sleep(delay)
        out[version] = registry.decide_alias(
            MlflowClient(store.tracking_uri),
            "m",
            version,
            "champion",
            "val_objective",
            value[version],
            holder_value=holder_value,
        )

    threads = [threading.Thread(target=promote, args=("2", 0.0)), threading.Thread(target=promote, args=("3", 0.1))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert max(overlap) == 1  # never two decisions at once
    assert str(store.get_model_version_by_alias("m", "champion").version) == "2"
    assert out["2"].moved and not out["3"].moved
    assert out["3"].reason.startswith("kept:") and "v2" in out["3"].reason and "0.90000" in out["3"].reason
