"""The benchmark (benchmarks/) at a tiny size: every section runs through the public CLI and writes the JSON
keys that benchmarks/results/ holds, with sane values; the package uses public ``pradot`` names only. A
change of the library API the benchmark relies on breaks these tests instead of the next benchmark run."""

import ast
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import run
from benchmarks.harness import flat_metrics
from benchmarks.ot import PROFILE_KEYS

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "benchmarks"
# one thread: on a busy shared machine, torch's multi-threaded small ops spin in barriers (5x slower)
TINY = [
    "--image-size",
    "64",
    "--train-images",
    "16",
    "--score-images",
    "2",
    "--repeats",
    "1",
    "--epochs",
    "1",
    "--stages",
    "3",
    "--subsample-rows",
    "200",
    "--threads",
    "1",
]
EPS_KEYS = {"0.001", "0.01", "0.1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("benchmark-data")


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    """All sections with POT, as a user runs it: the script form (python benchmarks/run.py), from another
    directory. (The ResNet50 shape is measured by the in-process run below.)"""
    tmp = tmp_path_factory.mktemp("benchmark-run")
    out = tmp / "result.json"
    cmd = [
        sys.executable,
        str(PACKAGE / "run.py"),
        *TINY,
        "--skip-resnet",
        "--data-root",
        str(data_root),
        "--work-dir",
        str(tmp),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_every_section_writes_its_keys(full_run):
    r, stdout, _ = full_run
    assert {
        "command",
        "argv",
        "date",
        "setting",
        "scale",
        "machine",
        "memory",
        "cost_matrix",
        "ot",
        "epoch",
        "scoring",
        "total_s",
        "targets",
    } <= set(r)
    assert r["setting"] == "cpu" and r["total_s"] > 0
    assert {"cpu_count", "torch", "numba_kernels", "git_commit", "load_average_end"} <= set(r["machine"])
    assert set(r["memory"]) == {"after_ot", "after_epoch", "after_scoring"}
    assert all(m["process_peak_rss_mb"] > 0 for m in r["memory"].values())
    assert "Targets:" in stdout and "written" in stdout


def test_ot_section_agrees_with_pot(full_run):
    r, _, _ = full_run
    cm, ot = r["cost_matrix"], r["ot"]
    assert cm["max_abs_diff"] < 1e-5  # the in-place Eq. 3 builder is the formula
    assert ot["oracle"] == "pot_sinkhorn_log" and ot["pot_backend"] == "torch"
    assert ot["shape"][0] == 16 * 64 and ot["shape"][1] == 4 * 64  # batch 16, n=4, 8x8 grid at 64 px
    for key in (
        "ours_s",
        "ours_first_call_s",
        "ours_torch_blocked_s",
        "ours_torch_s",
        "pot_float64_s",
        "pot_float32_s",
        "ours_after_pot_s",
        "floor_1pass_s",
        "speedup_vs_pot_float64",
        "mv_ms",
    ):
        assert ot[key] > 0, key
    assert ot["ours_backend"] in ("numba", "torch-blocked")
    assert ot["agreement"] < 1e-3
    assert set(ot["per_eps"]) == EPS_KEYS
    assert all(v["ours_finite"] and v["pot_finite"] and v["agreement"] < 1e-3 for v in ot["per_eps"].values())
    assert set(ot["profile_ms"]) == set(PROFILE_KEYS.values())
    assert all(v > 0 for k, v in ot["profile_ms"].items() if k != "backend")
    assert ot["profile_ms"]["backend"] == ot["ours_backend"]
    assert all(0 < v <= 1 for v in ot["plan_density"].values())
    assert r["targets"]["ot_plan_agreement <= 1e-3"][1] is True


def test_epoch_section_caches_and_gives_the_same_prototypes(full_run):
    r, _, _ = full_run
    ep = r["epoch"]["stage 3"]
    assert ep["train_images"] == 16 and ep["stages"] == [3]
    assert ep["cache_hits_misses"] == [1, 1]  # built once, read once per timed epoch
    assert ep["prototypes_max_abs_diff_cached_vs_uncached"] < 1e-5
    for key in (
        "uncached_epoch_s",
        "cached_epoch_s",
        "uncached_feature_s",
        "cached_ot_s",
        "cache_build_s",
        "speedup_cached_vs_uncached",
        "speedup_bound_1_plus_features_over_ot",
    ):
        assert ep[key] > 0, key
    assert "epoch_speedup_with_cache >= 5 (stage 3)" in r["targets"]


def test_scoring_section_times_both_paths_and_the_backbone(full_run):
    r, _, _ = full_run
    sc = r["scoring"]
    assert sc["fast_path"] is True and sc["images"] == 2 and sc["prototypes"] == 16 * 64
    for key in (
        "backbone_forward_ms_per_image",
        "assignment_scores_ms_per_image",
        "scoring_total_ms_per_image",
        "general_path_ms_per_image",
        "ratio_scoring_to_backbone",
    ):
        assert sc[key] > 0, key
    assert set(sc["times_ms_per_image"]) == {"backbone", "scores", "scores_and_upsampling"}
    assert "resnet50" not in sc  # --skip-resnet


def test_mlflow_logging(full_run, monkeypatch):
    """What ``--mlflow`` logs (a stand-in for the mlflow module: the real one is the slow test below)."""
    r, _, out = full_run
    logged = {}
    fake = types.SimpleNamespace(
        start_run=lambda run_name: contextlib.nullcontext(logged.update(name=run_name)),
        log_params=lambda p: logged.update(params=p),
        log_metrics=lambda m: logged.update(metrics=m),
        log_artifact=lambda a: logged.update(artifact=a),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    run.log_to_mlflow(r, out)
    assert logged["name"] == "benchmark-cpu" and logged["artifact"] == str(out)
    assert {"setting", "device", "cpu_count", "torch", "threads", "command"} == set(logged["params"])
    metrics = logged["metrics"]
    assert {
        "ot.ours_s",
        "ot.agreement",
        "scoring.ratio_scoring_to_backbone",
        "epoch.stage_3.speedup_cached_vs_uncached",
        "memory.after_ot.process_peak_rss_mb",
    } <= set(metrics)
    assert all(re.fullmatch(r"[A-Za-z0-9_.:/ -]+", k) for k in metrics), "names MLflow refuses"


@pytest.fixture()
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads sets torch's global thread count


def test_ot_without_pot_and_resnet_scoring_in_process(data_root, tmp_path, capsys, keep_threads):
    out = tmp_path / "ot.json"
    assert (
        run.main(
            [
                "--sections ot,scoring --skip-pot",
                *TINY,
                "--data-root",
                str(data_root),
                "--work-dir",
                str(tmp_path),
                "--output",
                str(out),
                "",
            ]
        )
        == 0
    )  # MLflow's one-string form of the arguments
    r = json.loads(out.read_text())
    assert set(r) >= {"ot", "cost_matrix", "scoring"} and "epoch" not in r
    assert "resnet50_error" not in r["scoring"] and r["scoring"]["resnet50"]["dim"] == 512
    assert r["scoring"]["resnet50"]["assignment_scores_ms_per_image"] > 0
    ot = r["ot"]
    assert ot["oracle"] == "pradot_sinkhorn_log_subsample" and ot["subsample_shape"] == [200, ot["shape"][1]]
    assert "pot_float64_s" not in ot and "speedup_vs_pot_float64" not in ot
    assert set(ot["per_eps"]) == EPS_KEYS
    assert all(v["ours_finite"] and v["oracle_finite"] and v["agreement"] < 1e-3 for v in ot["per_eps"].values())
    assert r["command"].split()[1:3] == ["-m", "benchmarks.run"]
    assert "pradot_sinkhorn_log_subsample" in capsys.readouterr().out


def test_cli_options_and_mlproject_entry(tmp_path):
    args = run.parse_args(["--paper-scale --device cpu", "--sections", "epoch,scoring", "--stages", "2,3;3"])
    assert args.paper_scale and args.train_images == 128 and args.section_list == ["epoch", "scoring"]
    assert args.stage_sets == [[2, 3], [3]]
    with pytest.raises(SystemExit):
        run.parse_args(["--sections", "ot,bogus"])
    assert flat_metrics({"a (b)": {"c, d/e": 1, "s": "x", "nan": float("nan")}}) == {"a_b.c__d_e": 1.0}
    mlproject = (REPO / "MLproject").read_text()
    entry = mlproject[mlproject.index("  benchmark:") :]
    assert 'command: "python -m benchmarks.run {args}"' in entry.split("\n\n")[0]


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_entry_point(data_root, tmp_path):
    """``mlflow run . -e benchmark -P args=...`` from the repository root, logging to MLflow (--mlflow)."""
    venv_bin = Path(sys.executable).parent
    out = tmp_path / "result.json"
    args = " ".join(
        [
            *TINY,
            "--skip-resnet",
            "--sections",
            "ot,epoch",
            "--data-root",
            str(data_root),
            "--work-dir",
            str(tmp_path),
            "--output",
            str(out),
            "--mlflow",
        ]
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        str(venv_bin / "mlflow"),
        "run",
        str(REPO),
        "-e",
        "benchmark",
        "--env-manager",
        "local",
        "--experiment-name",
        "benchmark",
        "-P",
        f"args={args}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text())["ot"]["agreement"] < 1e-3
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        keys = {k for (k,) in db.execute("SELECT key FROM metrics")}
        status = db.execute("SELECT status FROM runs").fetchall()
    assert {"ot.ours_s", "epoch.stage_3.speedup_cached_vs_uncached"} <= keys and status == [("FINISHED",)]


# ------------------------------------------------------------------------------------- the package's shape


def _modules():
    return sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_module_size_and_public_pradot_names_only(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 400, f"{path.name} has more than 400 lines"
    tree = ast.parse(source)
    pradot_modules = set()  # local names bound to pradot modules
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}:{node.name} has {length} lines"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pradot":
            assert not any(p.startswith("_") for p in node.module.split(".")), node.module
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{path.name} imports private {node.module}.{alias.name}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pradot":
                    assert not any(p.startswith("_") for p in alias.name.split(".")), alias.name
                    pradot_modules.add(alias.asname or alias.name.split(".")[0])
        if isinstance(node, ast.ImportFrom) and node.module == "pradot":
            pradot_modules.update(alias.asname or alias.name for alias in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            assert not (isinstance(base, ast.Name) and base.id in pradot_modules), (
                f"{path.name}:{node.lineno} uses private {node.attr}"
            )


def test_the_old_pipeline_script_is_gone():
    assert not (REPO / "pipelines" / "benchmark.py").exists()


def test_quality_comparison_at_a_tiny_size(tmp_path):
    """benchmarks/quality.py through its CLI: every category has the three models' numbers per anomaly type,
    the selected model's members and weights (summing to 1) and every candidate's validation objective."""
    from benchmarks import quality

    out = tmp_path / "quality.json"
    assert (
        quality.main(
            [
                "--categories",
                "fastener_kit",
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--n",
                "1",
                "--batch-ratio",
                "4",
                "--n-train",
                "8",
                "--n-validation",
                "4",
                "--n-test",
                "3",
                "--weight-step",
                "0.5",
                "--data-root",
                str(tmp_path / "data"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["command"].startswith("python -m benchmarks.quality") and "machine" in r
    sec = r["categories"]["fastener_kit"]
    for model in (sec["paper_ensemble"], sec["selected"]["metrics"], sec["baseline"]):
        assert set(quality.SHOWN) <= set(model) and all(0.0 <= v <= 1.0 for v in model.values())
    assert len(sec["selected"]["members"]) == len(sec["selected"]["weights"]) >= 1
    assert abs(sum(sec["selected"]["weights"]) - 1) < 1e-9
    assert set(sec["candidates_validation"]) >= {"memory bank"}
    # the paper's 4 banks, the recipe's 4, their 4 covariance twins and every baseline row (memory bank
    # before/after, direct recipe, PaDiM)
    assert set(quality.ROWS) <= set(sec["models"]) and len(sec["models"]) == 12 + len(quality.ROWS)
    assert sum(lab.endswith(" mahalanobis") for lab in sec["models"]) == 4
    for key in ("selected_with_padim", "selected_with_mahalanobis"):
        assert set(quality.SHOWN) <= set(sec[key]["metrics"])
        assert set(sec["timing"][key]) == {
            "fit_seconds_per_train_image",
            "score_seconds_per_test_image",
        }
    assert sec["n_images"] == {"train": 8, "validation": 4, "test": 9, "pseudo_anomalies": 4}


def test_selection_variants_at_a_tiny_size(tmp_path):
    """benchmarks/selection_variants.py: per patch fraction, promote's choice among the k=1 and k=3 banks and
    the memory bank (members, weights summing to 1), its test metrics and every candidate's validation ones,
    next to the paper ensemble and the baseline on the same data."""
    from benchmarks import quality, selection_variants

    out = tmp_path / "variants.json"
    assert (
        selection_variants.main(
            [
                "--category",
                "screw_bag",
                "--patch-fractions",
                "0.15:0.3,0.05:0.12",
                "--output",
                str(out),
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--n",
                "1",
                "--batch-ratio",
                "4",
                "--n-train",
                "8",
                "--n-validation",
                "4",
                "--n-test",
                "3",
                "--weight-step",
                "0.5",
                "--data-root",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r["choices"]) == {"0.15-0.3", "0.05-0.12"}
    for choice in r["choices"].values():
        assert len(choice["validation"]) == 9 and "memory bank" in choice["validation"]  # 2 x 4 banks + MB
        assert set(choice["members"]) <= set(choice["validation"]) and abs(sum(choice["weights"]) - 1) < 1e-9
        assert set(quality.SHOWN) <= set(choice["test"])
    assert set(quality.SHOWN) <= set(r["paper_ensemble"]) and set(quality.SHOWN) <= set(r["baseline"])
