"""Units of the client that need no service: local file names, the POST body, the error table, `list`'s options,
times and next-page command."""

from __future__ import annotations

import base64
import shlex
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pathspec
import pytest
import yaml

from ci_files_client.cli import run_payload, safe_run_folder
from ci_files_client.download import safe_local_name, target_for
from ci_files_client.errors import HINTS, CliError, Exit
from ci_files_client.listing import next_page
from ci_files_client.options import DEFAULT_URL, INLINE_INPUT_LIMIT, MAX_LIMIT, STATUSES, parse
from ci_files_client.render import expiry, when

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    plain = parse(["run", "Make a file"], {})
    assert run_payload(plain) == {"prompt": "Make a file", "wait": False}  # the client follows the run itself

    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b\n1,2\n")
    args = parse(
        ["run", "Plot it", "--input", str(data), "--input-blob", "big.parquet", "--continue", "resp_1", "--ttl", "5"],
        {},
    )
    assert run_payload(args) == {
        "prompt": "Plot it",
        "wait": False,
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
        run_payload(parse(["run", "Read it", "--input", str(big)], {}))
    assert raised.value.code == "input_too_large_inline" and raised.value.hint.exit == Exit.BAD_REQUEST
    assert "--input-blob" in raised.value.line()
    with pytest.raises(CliError) as missing:
        run_payload(parse(["run", "Read it", "--input", str(tmp_path / "nope.csv")], {}))
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


def test_options_go_before_or_after_the_command_and_say_where_they_came_from(tmp_path: Path) -> None:
    before = parse(["--url", "http://h:1", "--out", "o", "--key", "k", "get", "resp_1", "--ttl", "5"], {})
    after = parse(["get", "resp_1", "--url", "http://h:1", "--out", "o", "--key", "k", "--ttl", "5"], {})
    for args in (before, after):
        assert (args.url, args.url_source, args.key, args.key_source) == ("http://h:1", "--url", "k", "--key")
        assert (args.out, args.ttl, args.overwrite, args.links_only) == (Path("o"), 5, False, False)
    env = parse(["run", "x"], {"CI_FILES_URL": "https://app.example", "CI_FILES_KEY": "s"})
    assert (env.url, env.url_source, env.key, env.key_source) == (
        "https://app.example",
        "CI_FILES_URL",
        "s",
        "CI_FILES_KEY",
    )
    default = parse(["run", "x"], {})
    assert (default.url, default.url_source, default.key, default.out) == (DEFAULT_URL, None, None, Path("downloads"))
    assert parse(["--json", "delete", "resp_1"], {}).json is True


@pytest.mark.parametrize(
    ("argv", "environ", "code", "words"),
    [
        (["--url", "not-a-url", "run", "x"], {}, "invalid_url", "--url not-a-url is not the address"),
        (["run", "x"], {"CI_FILES_URL": "ftp://h"}, "invalid_url", "CI_FILES_URL=ftp://h is not the address"),
        (["get", "r", "--url", "http://h/api/runs"], {}, "invalid_url", "use --url http://h"),
        (["get", "r", "--ttl", "0"], {}, "invalid_request", "--ttl 0: links live at least 1 minute"),
        (["--open", "delete", "r"], {}, "option_not_for_command", "--open applies to `run` and `get`"),
        (["--ttl", "5", "list"], {}, "option_not_for_command", "--ttl applies to `run` and `get`, not `list`"),
        (["list", "--limit", "0"], {}, "invalid_request", "--limit 0: a page holds 1 to 100 runs"),
        (["list", "--limit", "101"], {}, "invalid_request", "--limit 101: a page holds 1 to 100 runs"),
        (["list", "--limit", "2x"], {}, "invalid_request", "--limit 2x: a page holds"),
        (["list", "--limit", "-1"], {}, "invalid_request", "--limit -1: a page holds"),
        (["list", "--limit", "\u0662"], {}, "invalid_request", "a page holds"),  # an Arabic-Indic 2: not ASCII
        (["list", "--status", "done"], {}, "invalid_request", "--status done: a run's status is one of running,"),
        (["list", "--status", "deleted"], {}, "invalid_request", "--status deleted: a run's status is one of"),
    ],
)
def test_options_that_cannot_work_are_refused_naming_them(
    argv: list[str], environ: dict[str, str], code: str, words: str
) -> None:
    with pytest.raises(CliError) as raised:
        parse(argv, environ)
    assert raised.value.code == code and words in raised.value.line()


def test_expiry_is_readable() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert expiry("2026-05-01T13:05:00Z", now) == "13:05 UTC (in 65 min)"
    assert expiry("2026-05-01T13:05:00Z", now, relative=False) == "13:05 UTC"
    assert expiry("2026-05-03T12:00:00Z", now) == "2026-05-03 12:00 UTC (in 2 d)"
    assert expiry("not a time", now) == "not a time"


def test_run_folders_are_safe_names() -> None:
    assert safe_run_folder("resp_abc-1") == "resp_abc-1"
    assert safe_run_folder("../../etc") == "______etc"
    assert safe_run_folder("") == "run"


def test_list_options_and_their_defaults() -> None:
    plain = parse(["list"], {})
    assert (plain.limit, plain.status, plain.cursor, plain.all, plain.json) == (None, None, None, False, False)
    args = parse(["--json", "list", "--limit", " 7 ", "--status", "Failed", "--cursor", "abc", "--all"], {})
    assert (args.limit, args.status, args.cursor, args.all, args.json) == (7, "failed", "abc", True, True)


def test_list_options_match_the_api() -> None:
    """The statuses and the page size `--status` and `--limit` accept are openapi.yaml's."""
    spec = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text())
    parameters = {p["name"]: p["schema"] for p in spec["paths"]["/api/runs"]["get"]["parameters"]}
    assert tuple(parameters["status"]["enum"]) == STATUSES
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, MAX_LIMIT)
    assert tuple(spec["components"]["schemas"]["RunSummary"]["properties"]["status"]["enum"]) == STATUSES


def test_when_is_local_and_short() -> None:
    tokyo = timezone(timedelta(hours=9), "JST")
    now = datetime(2026, 5, 1, 12, 0, tzinfo=tokyo)
    assert when("2026-05-01T00:30:00Z", now) == "today 09:30"
    assert when("2026-04-30T14:59:00Z", now) == "Apr 30 23:59"  # the day before, in local time
    assert when("2026-04-30T15:00:00Z", now) == "today 00:00"
    assert when("2025-12-31T00:00:00Z", now) == "2025-12-31"
    assert when("2026-05-01T00:30:00", now) == "today 09:30"  # no zone: UTC, as the service means it
    assert when("yesterday", now) == "yesterday"


def test_the_next_page_command_repeats_the_users_options() -> None:
    args = parse(["list", "--url", "http://h:1", "--status", "failed", "--limit", "2"], {})
    assert shlex.split(next_page(args, "Y3Vy")) == [
        "ci-files", "list", "--url", "http://h:1", "--status", "failed", "--limit", "2", "--cursor", "Y3Vy"
    ]  # fmt: skip
    from_env = parse(["list"], {"CI_FILES_URL": "http://h:1"})
    assert next_page(from_env, "Y3Vy") == "ci-files list --cursor Y3Vy"
    assert shlex.split(next_page(from_env, "a b;rm")) == ["ci-files", "list", "--cursor", "a b;rm"]
