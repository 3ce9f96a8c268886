"""Load: 200 runs, 20 at a time, each with three files of different sizes. Every file arrives whole
under its own blob, no run touches another's, and the worker gives back what it took (file
descriptors, memory, tasks)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests import figures
from tests.appclient import AppClient
from tests.helpers import storage_names

RUNS = 200
CONCURRENCY = 20
SIZES = {"small.txt": 1024, "medium.csv": 300 * 1024, "large.bin": 3 * 1024 * 1024}
MIB = 1024 * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident memory, after a full collection and after giving freed heap pages back to the OS
    (glibc keeps them otherwise, so freed memory would look like a leak)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: measure as is
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def script_for(app: AppClient, n: int) -> dict[str, Any]:
    """A script of its own per run: its own content (seeded by the script id), so a blob that another
    run overwrote would not match its sha256."""
    return app.script(
        files=[{"path": f"/mnt/data/run{n:03}/{name}", "size": size} for name, size in SIZES.items()],
        text=" ".join(f"[{name}](sandbox:/mnt/data/run{n:03}/{name})" for name in SIZES),
    )


async def run_all(app: AppClient, scripts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(info: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            reply = await app.post_run(prompt=info["prompt"])
        assert reply.status == 200, reply.body
        return reply.json

    return await asyncio.gather(*(one(info) for info in scripts))


def verify_all(app: AppClient, answers: list[dict[str, Any]], scripts: list[dict[str, Any]]) -> None:
    """Every link fetched (in 8 threads) and checked against the content its own script made."""
    checker = AppClient(app.rig)  # its own connection pool, closed before the resources are counted
    jobs = []
    for answer, info in zip(answers, scripts, strict=True):
        expected = {posixpath_name(f["path"]): f["sha256"] for f in info["files"]}
        assert sorted(f["filename"] for f in answer["files"]) == sorted(SIZES)
        assert answer["failed_files"] == []
        for file in answer["files"]:
            assert file["sha256"] == expected[file["filename"]] and file["bytes"] == SIZES[file["filename"]]
            jobs.append((file, expected[file["filename"]]))
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda job: checker.verify_link(*job), jobs))
    finally:
        checker.close()
    app.checked |= checker.checked
    figures.count("runs_verified", len(answers))


def posixpath_name(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def test_200_runs_20_at_a_time_lose_nothing_and_leak_nothing(app: AppClient, rig, caplog) -> None:
    # warm up: clients, connection pools, token and delegation key caches exist before the baseline
    warm = [script_for(app, n) for n in range(CONCURRENCY)]
    warm_answers = await run_all(app, warm)
    await asyncio.to_thread(verify_all, app, warm_answers, warm)
    caplog.clear()  # the harness keeps every log record of a test: not the app's memory
    fds, rss, tasks = open_fds(), rss_bytes(), len(asyncio.all_tasks())

    scripts = await asyncio.to_thread(lambda: [script_for(app, n) for n in range(RUNS)])
    answers = await run_all(app, scripts)

    blobs = [f["blob"] for answer in answers for f in answer["files"]]
    assert len(set(blobs)) == len(blobs) == RUNS * len(SIZES)  # no two files share a blob
    assert len({answer["response_id"] for answer in answers}) == RUNS
    for answer in answers:
        assert all(f["blob"].startswith(answer["response_id"] + "/") for f in answer["files"])
        app.assert_nothing_lost(answer, set(app.expected_files(answer["response_id"])), copied=True)
    await asyncio.to_thread(verify_all, app, answers, scripts)  # after all runs: nothing overwritten

    gate = asyncio.Semaphore(CONCURRENCY)

    async def delete(response_id: str) -> int:
        async with gate:
            return (await app.delete_run(response_id)).status

    statuses = await asyncio.gather(*(delete(a["response_id"]) for a in answers + warm_answers))
    assert set(statuses) == {204}
    assert all(storage_names(rig, a["response_id"]) == [] for a in answers[:: RUNS // 10])

    assert len(asyncio.all_tasks()) == tasks
    caplog.clear()
    after_fds, after_rss = open_fds(), rss_bytes()
    assert after_fds <= fds + 8, f"file descriptors: {fds} before, {after_fds} after"
    assert after_rss <= rss + 64 * MIB, f"memory: {rss / MIB:.0f} MiB before, {after_rss / MIB:.0f} MiB after"
