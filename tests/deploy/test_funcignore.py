"""What a deployment ships (.funcignore)."""

from __future__ import annotations

import os
from pathlib import Path

import pathspec
import pytest

from tests.deploy.deploy_script import ROOT


def funcignore() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())


def shipped_files(spec: pathspec.PathSpec) -> set[str]:
    shipped = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT)
        kept = []
        for d in dirnames:
            rel = (rel_dir / d).as_posix()
            # A virtual environment anywhere is never shipped, whatever its name.
            if spec.match_file(rel + "/") or (Path(dirpath) / d / "pyvenv.cfg").exists():
                if not spec.match_file(rel + "/"):
                    shipped.add(rel + "/pyvenv.cfg")  # reported by the assertion below
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            rel = (rel_dir / f).as_posix()
            if not spec.match_file(rel):
                shipped.add(rel)
    return shipped


FORBIDDEN_PREFIXES = ("tests/", "bench/", ".venv/", "venv/", "node_modules/", "infra/", "scripts/", ".git/")


def test_package_contents():
    shipped = shipped_files(funcignore())
    for required in ("function_app.py", "host.json", "requirements.txt"):
        assert required in shipped, f"{required} is not shipped (or does not exist)"
    assert any(p.startswith("code_interpreter_files/") and p.endswith(".py") for p in shipped)
    bad = sorted(
        p
        for p in shipped
        if p.startswith(FORBIDDEN_PREFIXES)
        or "/node_modules/" in p
        or p.endswith("pyvenv.cfg")
        or Path(p).name == "local.settings.json"
        or "__pycache__/" in p
    )
    assert not bad, f"these would be shipped: {bad[:20]}"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("function_app.py", False),
        ("host.json", False),
        ("requirements.txt", False),
        ("code_interpreter_files/pipeline.py", False),
        ("code_interpreter_files/sub/module.py", False),
        ("tests/test_x.py", True),
        ("bench/run.py", True),
        (".venv/lib/python3.11/site-packages/x.py", True),
        ("venv/bin/python", True),
        ("node_modules/azurite/package.json", True),
        ("code_interpreter_files/node_modules/x.js", True),
        ("local.settings.json", True),
        ("local.settings.json.example", True),
        ("infra/main.bicep", True),
        ("scripts/deploy.sh", True),
        (".git/HEAD", True),
        ("code_interpreter_files/__pycache__/x.cpython-311.pyc", True),
        (".python_packages/lib/site-packages/x.py", True),
        ("docs/deploy.md", True),
        (".azcli-venv/lib/python3.11/site-packages/azure/cli/__main__.py", True),
        ("requirements-azcli.txt", True),
        ("requirements-local.txt", True),
        ("docs/samples/weather.csv", True),
        ("local_azure/offline.py", True),
        ("scripts/preprovision.sh", True),
    ],
)
def test_funcignore_patterns(path, ignored):
    assert funcignore().match_file(path) is ignored
