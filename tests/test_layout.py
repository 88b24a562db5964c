"""The shape of the code: small orchestration modules, and the layers and cycles import-linter checks.

Module size: no module under ``src/`` or ``pipelines/`` over 500 formatted lines (function size is ruff's C901 and
PLR0915). Layers and cycles: the contracts in pyproject.toml's ``[tool.importlinter]`` (pipelines and benchmarks
on the library, never the reverse; the library imports no MLflow, Ray, Hydra or OmegaConf; no cycle between
sibling modules or subpackages), run here with ``lint-imports`` so that ``make test`` enforces them. import-linter
builds its graph with grimp, which counts imports inside functions too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500  # formatted lines (ruff format, 120 columns)
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _too_long(repo: Path, folders: list[str]) -> list[str]:
    """Modules under ``repo/<folder>`` over the cap (line counts of the files as committed: formatted by ruff)."""
    out = []
    for folder in folders:
        for path in sorted((repo / folder).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES:
                out.append(f"{path.relative_to(repo).as_posix()}: {n} lines")
    return out


def test_modules_are_small():
    """Module size in formatted lines, in the library and the orchestration; function size is ruff's (C901
    complexity, PLR0915 statements)."""
    too_long = _too_long(REPO, ["src", "pipelines"])
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {too_long}"


def test_the_cap_sees_long_modules(tmp_path):
    """The size check is not vacuous: a module one line over the cap is reported, one at the cap is not."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "src" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert _too_long(tmp_path, ["src"]) == [f"src/long.py: {MAX_MODULE_LINES + 1} lines"]


def _lint_imports(cwd: Path, *args: str, pythonpath: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": pythonpath, "HOME": str(Path.home())}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept():
    """pyproject.toml's import-linter contracts on this checkout's ``pradot``, ``pipelines`` and ``benchmarks``."""
    proc = _lint_imports(REPO, pythonpath=f"{REPO / 'src'}:{REPO}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_the_contract_types_catch_a_cycle_inside_a_function_and_a_forbidden_import(tmp_path):
    """The contract types used above are not vacuous: a cycle made by an import inside a function, and a
    library module importing MLflow, each break a contract of the same type."""
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from lib import b\n    return b\n")
    (pkg / "b.py").write_text("from lib import a\n")
    (pkg / "c.py").write_text("import mlflow\n")
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [tool.importlinter]
            root_packages = ["lib"]
            include_external_packages = true

            [[tool.importlinter.contracts]]
            name = "cycles"
            type = "acyclic_siblings"
            ancestors = ["lib"]

            [[tool.importlinter.contracts]]
            name = "no mlflow"
            type = "forbidden"
            source_modules = ["lib"]
            forbidden_modules = ["mlflow"]
            """
        )
    )
    proc = _lint_imports(tmp_path, pythonpath=str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 kept, 2 broken" in proc.stdout, proc.stdout[-3000:]
    assert "No cycles are allowed in lib" in proc.stdout and "lib.c -> mlflow" in proc.stdout, proc.stdout[-3000:]
