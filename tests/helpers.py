"""What several test modules share: reading the rig's storage as an operator would, signing webhooks,
running the `ci-files` command. Test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import standardwebhooks
from azure.storage.blob import BlobServiceClient

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
