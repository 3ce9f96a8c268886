"""Units without the rig: the single-flight, error mapping and settings edge cases."""

from __future__ import annotations

import asyncio

import pytest
from azure.core.exceptions import HttpResponseError

from code_interpreter_files.http_api import _error_for
from code_interpreter_files.settings import MAX_SAS_TTL_MINUTES, SettingsError, load_settings
from code_interpreter_files.singleflight import SingleFlight

BASE = {
    "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
    "OUTPUT_STORAGE_ACCOUNT_URL": "https://account.blob.core.windows.net",
}


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
    assert (error.status, error.code) == (502, "storage_auth_error")
    assert "Storage Blob Data Contributor" in error.message


@pytest.mark.parametrize(
    ("extra", "bad"),
    [
        ({"SAS_TTL_MAX_MINUTES": str(MAX_SAS_TTL_MINUTES + 1)}, "SAS_TTL_MAX_MINUTES"),
        ({"SAS_TTL_MINUTES": "90", "SAS_TTL_MAX_MINUTES": "60"}, "SAS_TTL_MINUTES"),
        ({"RUN_WAIT_SECONDS": "230"}, "RUN_WAIT_SECONDS"),
        ({"OUTPUT_CONTAINER": "Bad_Name"}, "OUTPUT_CONTAINER"),
        ({"AZURE_OPENAI_ENDPOINT": "ftp://x"}, "AZURE_OPENAI_ENDPOINT"),
    ],
)
def test_invalid_settings_are_named(extra: dict[str, str], bad: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({**BASE, **extra})
    assert bad in raised.value.invalid


def test_a_connection_string_must_be_able_to_sign() -> None:
    env = {k: v for k, v in BASE.items() if k != "OUTPUT_STORAGE_ACCOUNT_URL"}
    sas_only = "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2024&sig=abc"
    with pytest.raises(SettingsError) as raised:
        load_settings({**env, "OUTPUT_STORAGE_CONNECTION_STRING": sas_only})
    assert "OUTPUT_STORAGE_CONNECTION_STRING" in raised.value.invalid
    assert "sig=abc" not in str(raised.value)
    assert load_settings({**env, "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    with_key = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    assert load_settings({**env, "OUTPUT_STORAGE_CONNECTION_STRING": with_key}).storage_connection_string == with_key


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://r.openai.azure.com",
        "https://r.openai.azure.com/",
        "https://r.openai.azure.com/openai/v1/",
        "https://r.openai.azure.com/openai",
    ],
)
def test_the_endpoint_becomes_the_v1_base_url(endpoint: str) -> None:
    assert (
        load_settings({**BASE, "AZURE_OPENAI_ENDPOINT": endpoint}).openai_base_url
        == "https://r.openai.azure.com/openai/v1/"
    )
