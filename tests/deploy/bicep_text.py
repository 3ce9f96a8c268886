"""Reading Bicep text without a compiler: top-level object keys, params with their decorators, comments and
strings stripped (for bracket counts). Shared by test_app_settings.py and test_bicep.py."""

from __future__ import annotations

import re

from tests.deploy.deploy_script import ROOT

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


def bicep_object_keys(text: str, var_name: str) -> dict[str, str]:
    """Top-level keys (and raw values) of `var <var_name> = { ... }` in a Bicep file."""
    match = re.search(rf"^var {var_name} = \{{\n", text, re.M)
    assert match, f"var {var_name} not found"
    keys: dict[str, str] = {}
    depth = 1
    for line in text[match.end() :].splitlines():
        stripped = re.sub(r"\s*//[^']*$", "", line).strip()  # drop a trailing comment, not '...//...'
        if stripped.startswith("//"):
            continue
        if depth == 1:
            key = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$", stripped)
            if key:
                keys[key.group(1)] = key.group(2)
        depth += stripped.count("{") - stripped.count("}")
        if depth == 0:
            return keys
    raise AssertionError(f"var {var_name}: unbalanced braces")


def bicep_params(text: str) -> dict[str, dict[str, object]]:
    """Each `param` of a Bicep file with its default and @minValue/@maxValue/@allowed decorators."""
    params: dict[str, dict[str, object]] = {}
    decorators: dict[str, object] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.fullmatch(r"@(minValue|maxValue)\((\d+)\)", line):
            decorators[m.group(1)] = int(m.group(2))
        elif m := re.fullmatch(r"@allowed\(\[(.*)\]\)", line):
            decorators["allowed"] = tuple(re.findall(r"'([^']*)'", m.group(1)))
        elif m := re.match(r"param (\w+) (\w+)(?: = (.*))?$", line):
            default = m.group(3).strip("'") if m.group(3) is not None else None
            params[m.group(1)] = {"type": m.group(2), "default": default, **decorators}
            decorators = {}
        elif line and not line.startswith("@"):
            decorators = {}
    return params


def strip_bicep(text: str) -> str:
    text = re.sub(r"'''.*?'''", "''", text, flags=re.S)
    text = re.sub(r"'(?:[^'\\\n]|\\.)*'", "''", text)
    return re.sub(r"//[^\n]*", "", text)
