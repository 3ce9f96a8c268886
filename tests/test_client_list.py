"""`ci-files list`, run as a subprocess against the function app served over HTTP (local_azure/funchost.py) with
the rig behind it: runs of every kind, newest first, with their counts and sizes in local time; `--status`; paging
with the printed `--cursor` command and with `--all`; `--json`; errors that name the option (the rest of the client's
errors: tests/test_client_errors.py)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from local_azure.funchost import FuncHost
from tests.helpers import Result, assert_one_error_line, ci_files, hello_script
from tests.rig.rig import Rig

RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")
ID_LINE = re.compile(r"^      #(\d+) (resp_[A-Za-z0-9_-]+)$", re.MULTILINE)
MORE = re.compile(r"^      more runs: (ci-files list .*)$", re.MULTILINE)
TOKYO = ZoneInfo("Asia/Tokyo")  # never UTC's clock time: the `when` column shows it is local
LOCAL = {"TZ": "Asia/Tokyo", "COLUMNS": "100"}


def ids(result: Result) -> list[str]:
    """The run ids below the table, checking they are numbered 1, 2, ... in order."""
    found = ID_LINE.findall(result.out)
    assert [int(n) for n, _ in found] == list(range(1, len(found) + 1)), result.out
    return [run_id for _, run_id in found]


def rows(result: Result) -> list[list[str]]:
    """The table's rows as cells: #, when, status, files, size, prompt."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.out.splitlines() if line[:1] == "│"]


async def next_second(after: float) -> None:
    """Wait until the clock is past the second `after` fell in: a run started from now on has a later
    `created_at` (whole seconds) than one made before `after`, so "newest first" has one answer whatever
    the machine's speed."""
    await asyncio.sleep(max(0.0, int(after) + 1.01 - time.time()))
    assert int(time.time()) > int(after)


async def test_list_shows_the_runs_newest_first_with_counts_sizes_and_local_times(
    rig: Rig, funchost: FuncHost, configure: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    configure(OWNER_TAG=f"list-{uuid.uuid4().hex[:12]}")  # a deployment of its own: no other test's runs
    url = funchost.url

    async def cli(*args: str) -> Result:
        result = await ci_files(*args, url=url, cwd=tmp_path, env=LOCAL)
        assert "Traceback" not in result.err, result.err
        return result

    empty = await cli("list")
    assert empty.code == 0, empty.err
    assert 'No runs yet. What to do: start one: ci-files run "' in empty.out and "┏" not in empty.out
    assert json.loads((await cli("list", "--json", "--all")).out) == []

    made: dict[str, str] = {}
    previous = 0.0  # when the previous run had been made (its command had returned)

    async def run(name: str, *args: str, code: int = 0) -> None:
        nonlocal previous
        await next_second(previous)
        result = await cli("run", "--no-download", *args)
        previous = time.time()
        assert result.code == code, result.err + result.out
        made[name] = RUN_ID.findall(result.out)[0]

    await run("hello", hello_script(rig))
    two = rig.emulator.add_script(
        {
            "files": [
                {"path": "/mnt/data/a.csv", "content": "a" * 1500},
                {"path": "/mnt/data/b.txt", "content": "b" * 500},
            ]
        }
    )
    long_prompt = "Write a.csv and b.txt, then describe in great detail every column you found in them " + two["marker"]
    await run("two", long_prompt)
    failing = rig.emulator.add_script({"status": "failed", "files": []})
    await run("failed", f"Fail {failing['marker']}", code=5)
    expiring = rig.emulator.add_script(
        {"files": [{"path": "/mnt/data/a.txt", "content": "a"}], "container_expires": "before_list"}
    )
    await run("expired", f"Expire {expiring['marker']}", code=4)
    await run("running", "--no-wait", hello_script(rig, latency=120))
    newest_first = [made[name] for name in ("running", "expired", "failed", "two", "hello")]

    listed = await cli("list")
    assert listed.code == 0 and listed.err == "", listed.err
    assert listed.out.startswith(f"[1/1] Your runs at {url}, newest first\n"), listed.out
    assert ids(listed) == newest_first
    table = [line for line in listed.out.splitlines() if line[:1] in "┏┃┡│└"]
    assert max(len(line) for line in table) <= 100, "\n".join(table)
    assert "when (JST)" in table[1]
    by_id = dict(zip(ids(listed), rows(listed), strict=True))
    assert by_id[made["hello"]][2:5] == ["completed", "1", "11 bytes"]
    assert by_id[made["hello"]][5].startswith("Create test.txt containing hello world")
    two_row = by_id[made["two"]]
    assert two_row[2:5] == ["completed", "2", "2.0 kB"]
    assert two_row[5].endswith("…") and long_prompt.startswith(two_row[5][:-1]), two_row  # cut to fit, one line
    assert by_id[made["failed"]][2:6] == ["failed", "0", "0 bytes", f"Fail {failing['marker']}"]
    assert by_id[made["expired"]][2:4] == ["completed", "0"]
    assert by_id[made["expired"]][5].startswith("container_expired: Expire"), by_id[made["expired"]]
    assert by_id[made["running"]][2:5] == ["running", "-", "-"]  # no files counted yet
    assert MORE.search(listed.out) is None  # five runs: one page

    page = json.loads((await cli("list", "--json")).out)
    assert page["next_cursor"] is None and [r["response_id"] for r in page["runs"]] == newest_first
    for summary in page["runs"]:
        at = datetime.fromisoformat(summary["created_at"].replace("Z", "+00:00"))
        when = by_id[summary["response_id"]][1]
        assert when.endswith(at.astimezone(TOKYO).strftime("%H:%M")), (when, summary["created_at"])
    assert {(r["files"], r["bytes"]) for r in page["runs"] if r["response_id"] == made["two"]} == {(2, 2000)}

    failed = await cli("list", "--status", "failed")
    assert failed.out.startswith(f"[1/1] Your failed runs at {url}"), failed.out
    assert ids(failed) == [made["failed"]]
    assert ids(await cli("list", "--status", "RUNNING")) == [made["running"]]
    none = await cli("list", "--status", "cancelled")
    assert none.code == 0 and "No cancelled runs. What to do: leave out --status to list every run." in none.out

    # A page at a time: each page ends with the exact command for the next one.
    seen: list[str] = []
    command = ["list", "--limit", "2"]
    pages = 0
    while True:
        result = await cli(*command)
        assert result.code == 0, result.err
        pages += 1
        seen += ids(result)
        more = MORE.search(result.out)
        if more is None:
            break
        assert "(or --all for every page)" in result.out
        words = shlex.split(more.group(1))
        assert words[:4] == ["ci-files", "list", "--limit", "2"] and words[4] == "--cursor", words
        command = words[1:]
    assert pages == 3 and seen == newest_first

    every = await cli("list", "--all", "--limit", "2")
    assert ids(every) == newest_first and "      5 runs in all" in every.out and MORE.search(every.out) is None
    streamed = json.loads((await cli("list", "--json", "--all", "--limit", "2")).out)
    assert [r["response_id"] for r in streamed] == newest_first and streamed == page["runs"]
    two_pages = json.loads((await cli("--json", "list", "--limit", "3")).out)
    assert [r["response_id"] for r in two_pages["runs"]] == newest_first[:3] and two_pages["next_cursor"]

    deleted = await cli("delete", made["running"])
    assert deleted.code == 0, deleted.err
    assert ids(await cli("list")) == newest_first[1:]  # a deleted run is never listed


async def test_list_errors_name_the_option_and_the_fix(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    url = funchost.url
    zero = assert_one_error_line(await ci_files("list", "--limit", "0", url=url, cwd=tmp_path), "invalid_request")
    assert "--limit 0: a page holds 1 to 100 runs" in zero and "--all" in zero
    many = assert_one_error_line(await ci_files("list", "--limit", "101", url=url, cwd=tmp_path), "invalid_request")
    assert "--limit 101:" in many
    done = assert_one_error_line(await ci_files("list", "--status", "done", url=url, cwd=tmp_path), "invalid_request")
    assert "--status done: a run's status is one of running, completed, incomplete, failed, cancelled" in done
    out = assert_one_error_line(await ci_files("--out", "x", "list", url=url, cwd=tmp_path), "option_not_for_command")
    assert "--out applies to `run` and `get`, not `list`" in out

    # A cursor the service never gave out: its 400, as one line in the user's words.
    bad = await ci_files("list", "--cursor", "not-a-cursor", url=url, cwd=tmp_path)
    line = assert_one_error_line(bad, "invalid_request")
    assert line.startswith("error invalid_request (HTTP 400): --cursor not-a-cursor: the service says cursor"), line
    assert "copy the cursor whole from the `more runs:` line" in line
    as_json = await ci_files("list", "--json", "--cursor", "not-a-cursor", url=url, cwd=tmp_path)
    assert json.loads(as_json.out)["error"]["code"] == "invalid_request"
