"""Units of the client that need no service: local file names, the POST body, the error table."""

from __future__ import annotations

import base64
from pathlib import Path

import pathspec
import pytest

from ci_files_client.cli import INLINE_INPUT_LIMIT, parser, run_payload
from ci_files_client.download import safe_local_name, target_for
from ci_files_client.errors import HINTS, CliError, Exit


@pytest.mark.parametrize(
    ("service_name", "local"),
    [
        ("test.txt", "test.txt"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Windows\\win.ini", "win.ini"),
        ("a/b/report.csv", "report.csv"),
        ("CON.txt", "CON_.txt"),
        ('bad<>:"|?*name.png', "badname.png"),
        ("tab\tand\x1b[31mred.txt", "taband[31mred.txt"),
        ("..", "cfile_1"),
        ("", "cfile_1"),
        ("/", "cfile_1"),
    ],
)
def test_safe_local_name(service_name: str, local: str) -> None:
    assert safe_local_name(service_name, "cfile_1") == local


def test_long_names_are_cut_and_duplicates_numbered(tmp_path: Path) -> None:
    assert len(safe_local_name("x" * 400 + ".txt", "f").encode()) <= 200
    taken: set[str] = set()
    names = [
        target_for(tmp_path, {"filename": name, "file_id": "f"}, taken).name for name in ("a.txt", "A.txt", "a.txt")
    ]
    assert names == ["a.txt", "A (2).txt", "a (3).txt"]


def test_run_payload_sends_new_fields_only_when_used(tmp_path: Path) -> None:
    plain = parser().parse_args(["run", "Make a file"])
    assert run_payload(plain) == {"prompt": "Make a file", "wait": True}

    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b\n1,2\n")
    args = parser().parse_args(
        ["run", "Plot it", "--input", str(data), "--input-blob", "big.parquet", "--continue", "resp_1", "--ttl", "5"]
    )
    assert run_payload(args) == {
        "prompt": "Plot it",
        "wait": True,
        "sas_ttl_minutes": 5,
        "previous_response_id": "resp_1",
        "input_files": [
            {"name": "data.csv", "content_base64": base64.b64encode(b"a,b\n1,2\n").decode()},
            {"blob": "big.parquet"},
        ],
    }


def test_large_inputs_are_not_sent_inline(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (INLINE_INPUT_LIMIT + 1))
    with pytest.raises(CliError) as raised:
        run_payload(parser().parse_args(["run", "Read it", "--input", str(big)]))
    assert raised.value.code == "input_too_large_inline" and raised.value.hint.exit == Exit.BAD_REQUEST
    assert "--input-blob" in raised.value.line()
    with pytest.raises(CliError) as missing:
        run_payload(parser().parse_args(["run", "Read it", "--input", str(tmp_path / "nope.csv")]))
    assert missing.value.code == "input_unreadable"


def test_every_hint_is_one_actionable_sentence() -> None:
    for code, hint in HINTS.items():
        assert hint.exit != Exit.OK and hint.todo and "\n" not in hint.todo, code
        assert CliError(code, "x").line().startswith(f"error {code}: x. What to do: ")


def test_the_client_is_not_shipped_with_the_function_app() -> None:
    root = Path(__file__).resolve().parents[1]
    spec = pathspec.GitIgnoreSpec.from_lines((root / ".funcignore").read_text().splitlines())
    for path in ("ci_files_client/cli.py", "notebooks/walkthrough.ipynb", "pyproject.toml", "downloads/test.txt"):
        assert spec.match_file(path), path
    assert not spec.match_file("function_app.py") and not spec.match_file("requirements.txt")
