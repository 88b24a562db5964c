"""Declared dependencies against imports, both ways, by deptry (configuration: ``[tool.deptry]`` in pyproject.toml).

Every third-party module the project imports (library, pipelines, benchmarks and tests) comes from a distribution
pyproject.toml declares, in the dependencies or an extra: nothing works by accident because another package
happens to bring it (scikit-image, pyarrow and cloudpickle each did once). And every declared distribution is
imported somewhere, or is listed in ``[tool.deptry.per_rule_ignores]`` with the reason (a plugin, a command,
weights loaded by name). Optional packages (SAM's segment_anything) are loaded with importlib behind a check that
says how to install them.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPTRY = Path(sys.executable).parent / "deptry"


def _deptry(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(DEPTRY.parent), "HOME": str(Path.home()), "NO_COLOR": "1"}
    return subprocess.run(
        [str(DEPTRY), "--no-ansi", "."], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_declared_dependencies_match_the_imports():
    proc = _deptry(REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"deptry (fix pyproject.toml, and conda.yaml for runtime packages):\n{out[-4000:]}"
    assert "No dependency issues found" in out, out[-2000:]


def test_deptry_sees_an_undeclared_import_and_an_unused_declaration(tmp_path):
    """The check is not vacuous: in a project that imports scikit-image without declaring it (installed here,
    so it works "by accident": DEP003) and declares a package it never imports (DEP002), deptry reports both."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "probe"\nversion = "0"\ndependencies = ["numpy", "tifffile"]\n'
    )
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "__init__.py").write_text("import numpy\nimport skimage\n")
    proc = _deptry(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "DEP003 'skimage' imported but it is a transitive dependency" in out, out
    assert "DEP002 'tifffile' defined as a dependency but not used" in out, out
