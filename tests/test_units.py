"""Units without the rig: the single-flight and error mapping (settings: tests/test_settings.py)."""

from __future__ import annotations

import asyncio

import pytest
from azure.core.exceptions import HttpResponseError

from code_interpreter_files.http_api import _error_for, status_of
from code_interpreter_files.singleflight import SingleFlight


async def test_a_caller_arriving_while_a_cancelled_flight_winds_down_starts_a_new_one() -> None:
    flights = SingleFlight()
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        try:
            await asyncio.sleep(0.3)
            return f"done {calls}"
        except asyncio.CancelledError:
            await asyncio.sleep(0.1)  # clean-up that takes a while (closing streams, cancelling blocks)
            raise

    async def impatient() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await flights.run("run", work)

    first = asyncio.create_task(impatient())
    await asyncio.sleep(0.08)  # the first caller gave up; its flight is being cancelled
    assert await flights.run("run", work) == "done 2"
    await first


async def test_concurrent_callers_share_one_flight() -> None:
    flights = SingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 7

    assert await asyncio.gather(*(flights.run("k", work) for _ in range(5))) == [7] * 5
    assert calls == 1


def test_storage_refusing_the_identity_is_an_auth_error_not_try_again() -> None:
    refused = HttpResponseError(
        message="This request is not authorized to perform this operation using this permission."
    )
    refused.status_code = 403
    error = _error_for(refused)
    assert (status_of(error), error.code) == (502, "storage_auth_error")
    assert "Storage Blob Data Contributor" in error.message


def test_manifests_of_older_versions_are_read_and_newer_ones_refused() -> None:
    import pytest

    from code_interpreter_files.records import MANIFEST_VERSION, Outcome, UnsupportedManifest

    version_1 = {
        "version": 1,
        "response_id": "resp_1",
        "status": "completed",
        "text": "see sandbox:/mnt/data/a.txt",
        "files": [
            {
                "filename": "a.txt",
                "file_id": "cfile_1",
                "container_id": "cntr_1",
                "blob": "resp_1/cfile_1/a.txt",
                "bytes": 1,
                "content_type": "text/plain",
                "sha256": "0" * 64,
                "cited": True,
                "sandbox_path": "/mnt/data/a.txt",
            }
        ],
        "failed_files": [{"filename": "b", "file_id": "cfile_2", "code": "file_not_found", "message": "gone"}],
    }
    record = Outcome.from_manifest(version_1)
    assert record.files[0].origin == "cited" and record.warnings == [] and record.incomplete_reason is None
    assert record.owner is None and record.inputs == []
    version_2_failure = {
        **version_1,
        "version": 2,
        "files": [],
        "error": {"status": 502, "code": "run_failed", "message": "x"},
    }
    assert Outcome.from_manifest(version_2_failure).error == {
        "code": "run_failed",
        "message": "x",
    }  # status: http_api's
    again = Outcome.from_manifest(record.to_manifest())
    assert again == record and record.to_manifest()["version"] == MANIFEST_VERSION
    for bad in (
        {**version_1, "version": MANIFEST_VERSION + 1},
        {**version_1, "version": "2"},
        {**version_1, "version": 0},
    ):
        with pytest.raises(UnsupportedManifest):
            Outcome.from_manifest(bad)
