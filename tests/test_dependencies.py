"""Every third-party module the project imports (library, pipelines, benchmarks and tests) comes from a
distribution that pyproject.toml declares, in the dependencies or an extra: nothing works by accident because
another package happens to bring it (scikit-image, pyarrow and cloudpickle each did once). Optional packages
(SAM's segment_anything) are loaded with importlib behind a check that says how to install them."""

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"pradot", "pipelines", "tests", "benchmarks"}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for root in ("src", "pipelines", "benchmarks", "tests"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module]
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    else []
                )
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return {_name(r) for r in reqs}


def _name(requirement: str) -> str:
    return re.split(r"[<>=\[;! ~]", requirement.strip())[0].lower().replace("_", "-")


def test_every_imported_distribution_is_declared():
    dists = md.packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, where in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module in LOCAL:
            continue
        provided_by = {_name(d) for d in dists.get(module, [])}
        if not provided_by & declared:
            undeclared[module] = (sorted(provided_by) or ["not installed"], sorted(where)[:3])
    assert not undeclared, f"imported but not declared in pyproject.toml (add them, and to conda.yaml): {undeclared}"
