"""`mlflow run .` without conda: the project's conda.yaml through MLflow's uv environment manager (MLflow reads
python and the pip list from conda.yaml, `uv venv --python=3.11` + `uv pip install` into ~/.mlflow/envs,
cached by conda.yaml's contents), and the literal `mlflow run .` on a machine without conda."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PYTHONPATH")}
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def test_conda_yaml_gives_uv_the_python_and_the_pip_list():
    """What MLflow 3's project runner builds for --env-manager uv/virtualenv from conda.yaml."""
    from mlflow.utils.environment import _PythonEnv

    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert env.python == "3.11" and env.build_dependencies == ["pip"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in env.dependencies}
    assert {"torch", "mlflow", "onnxruntime", "onnx", "opencv-python-headless", "hydra-core"} <= names
    assert "scikit-image" not in names


def test_uv_builds_the_python_mlflow_asks_for_and_the_pip_list_is_what_the_suite_tests(tmp_path):
    """The offline half of `--env-manager uv`: MLflow's own uv command creates the environment's interpreter
    (python from conda.yaml, found locally: nothing downloaded), and every requirement of conda.yaml's pip list
    is met by the versions this suite runs with. The install itself is the `network` test below."""
    from mlflow.utils.environment import _PythonEnv
    from mlflow.utils.virtualenv import _get_uv_env_creation_command
    from packaging.requirements import Requirement

    env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    cmd = [str(VENV_BIN / "uv"), *_get_uv_env_creation_command(tmp_path / "env", env.python)[1:], "--offline"]
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    python = tmp_path / "env" / "bin" / "python"
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    assert version.stdout.startswith(f"{env.python}."), version.stdout
    unmet = []
    for line in env.dependencies:
        req = Requirement(line)
        installed = importlib.metadata.version(req.name)
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line} (installed here: {installed})")
    assert not unmet, f"conda.yaml asks for versions the suite does not run with: {unmet}"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_run_with_uv_trains_the_ci_recipe(tmp_path):
    """The literal command a user without conda runs, with uv (a dev dependency). The first run on a machine
    downloads the environment's packages from PyPI (about 2.5 GB, a minute here); later runs reuse it.
    Marked ``network``: `make test` leaves it out, `make test-network` (run by `.ci/run` when PyPI answers)
    runs it."""
    assert shutil.which("uv", path=str(VENV_BIN)), "uv is a dev dependency: make setup installs it"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(REPO),
        "--env-manager",
        "uv",
        "--experiment-name",
        "uv",
        "-P",
        "dataset=synthetic",
        "-P",
        f"data_root={tmp_path}/synthetic",
        "-P",
        f"overrides=experiment=ci cache.dir={tmp_path}/cache evaluation.figures=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("uv").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.env"] == "uv"
    assert "image_auroc" in run.data.metrics and "test_f1_max" in run.data.metrics
    envs = str(Path.home() / ".mlflow" / "envs")  # the command ran in the environment uv built there
    assert f"Running command 'source {envs}/mlflow-" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.skipif(shutil.which("conda") is not None, reason="conda is installed: the literal command would use it")
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_literal_mlflow_run_without_conda_names_conda(tmp_path):
    """Without --env-manager MLflow takes the environment from MLproject's conda_env and needs conda; on a machine
    without it MLflow stops before the project's code runs, with its own message (docs/how-to/environments.md
    says to add --env-manager uv or local)."""
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO), "-P", "category=screw_bag"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Could not find Conda executable" in proc.stderr, proc.stderr[-2000:]
    page = (REPO / "docs" / "how-to" / "environments.md").read_text()
    assert "--env-manager uv" in page and "Could not find Conda executable" in page
