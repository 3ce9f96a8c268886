"""What several test modules share: reading the rig's storage as an operator would, signing webhooks,
running the `ci-files` command. Test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import standardwebhooks
from aiohttp import web
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue.aio import QueueClient

from tests.rig.rig import Rig

# The run's lease blob, start record and DELETE's tombstone (runs written by earlier versions have them).
BOOKKEEPING = ("lock", "run.json", "deleted")
# A Standard Webhooks secret for callbacks and Azure OpenAI webhooks in tests.
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
CI_FILES = Path(sys.executable).parent / "ci-files"  # the console script `-e .` installs


def storage_names(rig: Rig, response_id: str, *, bookkeeping: bool = False) -> list[str]:
    """What is really in the output container under the run's prefix (read with the account key):
    the files and the manifest; with `bookkeeping`, also the lock, run record and tombstone."""
    service = BlobServiceClient.from_connection_string(rig.azurite.connection_string)
    container = service.get_container_client(rig.OUTPUT_CONTAINER)
    if not container.exists():
        return []
    names = sorted(b.name for b in container.list_blobs(name_starts_with=response_id + "/"))
    return names if bookkeeping else [n for n in names if n.split("/", 1)[1] not in BOOKKEEPING]


def manifest(rig: Rig, response_id: str) -> dict[str, Any]:
    """The run's manifest.json as stored (read with the account key)."""
    service = BlobServiceClient.from_connection_string(rig.azurite.connection_string)
    blob = service.get_blob_client(rig.OUTPUT_CONTAINER, f"{response_id}/manifest.json")
    return json.loads(blob.download_blob().readall())


def signed_webhook(body: str, webhook_id: str, secret: str = SECRET) -> dict[str, str]:
    """The headers Azure OpenAI sends with a webhook `body`, signed with `secret`."""
    signature = standardwebhooks.Webhook(secret).sign(webhook_id, datetime.now(UTC), body)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature,
    }


@dataclass
class Result:
    """What a command printed and its exit code."""

    code: int
    out: str
    err: str


def ci_files_environ(url: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A user's environment for `ci-files`: CI_FILES_URL set, no key, the rig's CA in SSL_CERT_FILE."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CI_FILES_")}
    environ.update(CI_FILES_URL=url, COLUMNS="200", NO_COLOR="1")
    environ.update(env or {})
    return environ


async def ci_files(*args: str, url: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run the installed `ci-files` command as a user would (the rig's CA is in SSL_CERT_FILE)."""
    assert CI_FILES.exists(), "ci-files is not installed: pip install -r requirements-dev.txt"
    proc = await asyncio.create_subprocess_exec(
        str(CI_FILES),
        *args,
        cwd=cwd,
        env=ci_files_environ(url, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def hello_script(rig: Rig, **extra: Any) -> str:
    """A prompt the emulator answers by writing test.txt containing `hello world`."""
    info = rig.emulator.add_script({"files": [{"path": "/mnt/data/test.txt", "content": "hello world"}], **extra})
    return f"Create test.txt containing hello world {info['marker']}"


class Receiver:
    """A caller's callback endpoint on loopback: keeps every delivery, verified or not."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=204)

    def verified(self) -> list[dict[str, Any]]:
        webhook = standardwebhooks.Webhook(SECRET)
        return [webhook.verify(body, headers) for headers, body in self.deliveries]


async def until(condition: Callable[[], object], within: float = 60.0, step: float = 0.05) -> None:
    """Wait until `condition()` is true; fail the test if it is not within `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


def manifest_exists(rig: Rig, response_id: str) -> bool:
    return f"{response_id}/manifest.json" in storage_names(rig, response_id)


def app_settings(env: dict[str, str]) -> dict[str, str]:
    """The settings configure() set, without the rig's own (configure sets those again)."""
    return {k: v for k, v in env.items() if k not in Rig.ENV_NAMES or k == "RUNS_QUEUE"}


async def peek_queue(rig: Rig, queue: str) -> list[dict[str, Any]]:
    """The messages visible on `queue` now, decoded (peeked with the account key: they stay)."""
    async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue) as client:
        try:
            peeked = await client.peek_messages(max_messages=32)
        except ResourceNotFoundError:  # nothing was ever sent to it
            return []
    return [json.loads(base64.b64decode(m.content)) for m in peeked]


@dataclass(frozen=True)
class StorageRequest:
    """One request as Azurite received it: the path on the wire and the container and blob it understood."""

    method: str
    path: str  # percent-encoded, as sent
    container: str
    blob: str


_AZURITE_LINE = r" ([0-9a-f-]{36}) info: BlobStorageContextMiddleware: "
_REQUEST_URL = re.compile(_AZURITE_LINE + r"RequestMethod=(\S+) RequestURL=(\S+) ")
_REQUEST_PARTS = re.compile(_AZURITE_LINE + r"Account=\S* Container=(\S*) Blob=(.*)$")


class AzuriteRecorder:
    """Reads an Azurite `--debug` log (local_azure.azurite.Azurite(debug_log=...)) from a mark on.

    Azurite logs a request when it starts handling it; `requests_until_marker` sends one request of its
    own and reads until that request shows up, so every request sent before it is in what it returns.
    """

    def __init__(self, log: Path, connection_string: str) -> None:
        self.log = log
        self.connection_string = connection_string
        self._offset = 0

    def mark(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0

    def requests_until_marker(self, timeout: float = 30.0) -> list[StorageRequest]:
        marker = f"marker-{uuid.uuid4().hex}"
        service = BlobServiceClient.from_connection_string(self.connection_string)
        with contextlib.suppress(ResourceNotFoundError):
            service.get_blob_client(marker, "probe").get_blob_properties()
        service.close()
        deadline = time.monotonic() + timeout
        while True:
            with self.log.open("rb") as file:
                file.seek(self._offset)
                text = file.read().decode("utf-8", "replace")
            found = _parse_azurite_log(text)
            if any(r.container == marker for r in found):
                return [r for r in found if r.container != marker]
            assert time.monotonic() < deadline, "Azurite never logged the marker request"
            time.sleep(0.05)


def _parse_azurite_log(text: str) -> list[StorageRequest]:
    urls: dict[str, tuple[str, str]] = {}
    found: list[StorageRequest] = []
    for line in text.splitlines():
        if match := _REQUEST_URL.search(line):
            urls[match[1]] = (match[2], urlsplit(match[3]).path)
        elif (match := _REQUEST_PARTS.search(line)) and match[1] in urls:
            method, path = urls.pop(match[1])
            container = "" if match[2] == "undefined" else match[2]
            found.append(StorageRequest(method=method, path=path, container=container, blob=match[3]))
    return found


def assert_one_error_line(result: Result, code: str) -> str:
    """The command failed with one line `error <code>...: ... What to do: ...` and the code's exit code."""
    from ci_files_client.errors import HINTS

    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error {code}"), lines[0]
    assert "What to do: " in lines[0]
    assert "Traceback" not in result.out + result.err
    assert result.code == HINTS[code].exit != 0, (result.code, result.err)
    return lines[0]
