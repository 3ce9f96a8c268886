"""Last: no secret in any log line of the session nor in any error body the app answered.

The session's log records are captured by `figures.LOGS` (installed in conftest): the app's logger at
DEBUG, everything else (azure-core's HTTP logging policy, azure-identity, openai, httpx2, aiohttp) at
INFO. Secrets: bearer tokens (any JWT), the API key, the identity header, the account key, the user
delegation keys the app used, and every SAS signature the suite received (plain `sig=` too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

import code_interpreter_files
from tests import figures
from tests.conftest import session_leaks

APP_DIR = Path(code_interpreter_files.__file__).parent


def test_the_leak_scanner_finds_what_it_looks_for(rig) -> None:
    """A real token from the identity endpoint, the API key, a SAS signature: all found; the SDKs'
    redacted forms are not leaks."""
    token = httpx.get(
        rig.identity_url,
        params={"api-version": "2019-08-01", "resource": "https://storage.azure.com"},
        headers={"X-IDENTITY-HEADER": rig.identity_header},
    ).json()["access_token"]
    found = figures.SECRETS.leaks
    assert found(f"Authorization: Bearer {token}")
    assert found(f"calling with api-key {rig.api_key}")
    assert found("url: https://h/c/b?sv=1&sig=abcdEFGH%2B12%3D&sp=r")
    assert found(f"header X-IDENTITY-HEADER: {rig.identity_header}")
    assert not found("Request URL: 'https://h/c/b?comp=REDACTED&sig=REDACTED'")
    assert not found("https://h/c/b?sv=1&sig=*****")
    if figures.SECRETS.signatures:
        assert found("leaked " + next(iter(figures.SECRETS.signatures)))


def test_the_app_uses_no_plain_httpx_client() -> None:
    """The `httpx` logger is the test harness's own (it fetches SAS links on purpose): the app's HTTP
    goes through httpx2 (openai) and aiohttp (azure-core), whose loggers are scanned."""
    for source in APP_DIR.glob("*.py"):
        assert not re.search(r"^\s*(import httpx\b|from httpx\b)(?!2)", source.read_text(), re.M), source.name
    import httpx2
    import openai

    client = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:1/")._client
    assert isinstance(client, httpx2.AsyncClient) and not isinstance(client, httpx.AsyncClient)


@pytest.mark.run_last
def test_no_secret_in_any_log_line_or_error_body() -> None:
    lines = figures.LOGS.lines
    if not any(line.startswith("code_interpreter_files ") for line in lines):
        pytest.skip("the app did not run in this session: no log to scan")
    assert any(line.startswith("azure.core.pipeline.policies.http_logging_policy INFO") for line in lines), (
        "azure-core's HTTP logging was not captured: the scan would prove nothing"
    )
    leaks = session_leaks()
    assert not leaks, "\n".join(leaks[:20])


@pytest.mark.run_last
def test_no_queue_message_of_the_session_carries_a_url_or_more_than_ids() -> None:
    """Messages carry the run's id and an attempt number, nothing else: a callback URL (and the token
    its query may hold) is read from the run's record, never put on the queue (issue 18)."""
    sent = figures.QUEUE_MESSAGES
    if not sent:
        pytest.skip("no run was queued in this session")
    for text in sent:
        assert "http" not in text.lower() and "?" not in text, text
        message = json.loads(text)
        assert set(message) <= {"kind", "response_id", "attempt"}, message
    figures.FIGURES["queue_messages_checked"] = len(sent)
