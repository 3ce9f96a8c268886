"""What Azure installs for the app (requirements.txt, the remote build) provides every module the shipped code
imports: a module that only the developers' venvs happen to have deploys, then fails at indexing and no
function runs (azure-data-tables was imported by run_table.py before requirements.txt named it)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.deploy_script import ROOT

APP_SOURCES = [ROOT / "function_app.py", *sorted((ROOT / "code_interpreter_files").rglob("*.py"))]
LOCAL_PACKAGES = {"code_interpreter_files", "function_app"}


def imported_modules(path: Path) -> set[str]:
    """Absolute imports of a file, by their full dotted name (`azure.data.tables`, not just `azure`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] not in LOCAL_PACKAGES | set(sys.stdlib_module_names)}


def pinned() -> set[str]:
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert str(requirement.specifier).startswith("=="), f"requirements.txt: {line} is not pinned"
            names.add(canonicalize_name(requirement.name))
    return names


def installed_with(names: set[str]) -> set[str]:
    """`names` and everything pip installs with them (their dependencies, as this venv resolved them)."""
    closure: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return closure


@functools.cache
def top_level_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> str | None:
    """The distribution that installed `module` in this venv (None for a bare namespace package)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed in this venv"
    if spec.origin in (None, "namespace"):
        return None
    origin = os.path.normpath(spec.origin)
    # Only the few distributions that install this top-level name (azure: a namespace shared by many).
    for name in top_level_owners().get(module.split(".")[0], []):
        dist = importlib.metadata.distribution(name)
        if any(os.path.normpath(str(dist.locate_file(file))) == origin for file in dist.files or []):
            return canonicalize_name(name)
    raise AssertionError(f"no distribution lists {origin}")


def test_requirements_provide_every_module_the_app_imports():
    available = installed_with(pinned())
    missing = {}
    for source in APP_SOURCES:
        for module in sorted(imported_modules(source)):
            dist = distribution_of(module)
            if dist is not None and dist not in available:
                missing[module] = f"{dist} (imported by {source.relative_to(ROOT)})"
    assert not missing, f"requirements.txt installs nothing that provides: {missing}"


def test_the_check_finds_a_module_outside_requirements():
    """It can fail: pytest is installed here (requirements-dev.txt) but never with the app."""
    assert distribution_of("azure.data.tables") == "azure-data-tables"
    assert distribution_of("pytest") == "pytest"
    assert "pytest" not in installed_with(pinned())
    assert "azure-data-tables" in pinned()
