"""The streamed block upload's body (blob_upload._BlockBody): each block goes out as the download's
own chunks, in slices, with its MD5, and a retried request sends the whole block again.

Its other guarantees (nothing visible before the commit, sizes, sha256, the budget released on every
path) are tested with the copies that use it: tests/test_reliability.py, tests/test_hostile_input.py,
tests/test_memory_budget.py.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from code_interpreter_files import blob_upload
from code_interpreter_files.memory_budget import MemoryBudget
from tests.rig.rig import Rig

B = blob_upload.BLOCK_BYTES


def content(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


async def odd_chunks(data: bytes, sizes: tuple[int, ...]) -> AsyncIterator[bytes]:
    """`data` in chunks of the given sizes, over and over: chunks that cross block boundaries."""
    sent, turn = 0, 0
    while sent < len(data):
        size = sizes[turn % len(sizes)]
        yield data[sent : sent + size]
        sent, turn = sent + size, turn + 1


async def upload(client: BlobClient, data: bytes, budget: MemoryBudget) -> blob_upload.StoredBlob:
    return await blob_upload.upload_stream(
        client,
        odd_chunks(data, (B - 1000, 3 * B // 2, 700, 1 << 20)),
        max_bytes=len(data),
        expected_bytes=len(data),
        filename="odd.bin",
        content_type="application/octet-stream",
        metadata={},
        budget=budget,
    )


async def test_each_block_goes_up_with_its_size_and_md5_and_the_blob_has_every_byte(
    rig: Rig, configure: Callable[..., dict[str, str]]
) -> None:
    """Through Azurite with the app's identity: every Put Block carries Content-Length and the MD5
    of exactly its bytes (Azurite refuses a wrong one), whatever the chunks the download gave."""
    from code_interpreter_files.services import get_services

    configure()
    services = await get_services()
    await services.store.ensure_container()
    sent: list[tuple[int, str | None]] = []

    def hook(request: Any) -> None:
        if "comp=block&" in request.http_request.url:
            headers = request.http_request.headers
            sent.append((int(headers["Content-Length"]), headers.get("Content-MD5")))

    data = content(2 * B + B // 2 + 3)
    budget = MemoryBudget(64 * 1024 * 1024)
    async with BlobServiceClient(
        rig.azurite.account_url, credential=services.credential, raw_request_hook=hook
    ) as service:
        client = service.get_blob_client(services.settings.output_container, "resp_md5/f/odd.bin")
        stored = await upload(client, data, budget)
        downloaded = await (await client.download_blob()).readall()
    assert stored == blob_upload.StoredBlob(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert downloaded == data
    blocks = [data[i : i + B] for i in range(0, len(data), B)]
    # in flight together, so in any order
    assert sorted(sent) == sorted((len(b), base64.b64encode(hashlib.md5(b).digest()).decode()) for b in blocks)
    assert budget.in_use == 0 and budget.peak <= 3 * (B + blob_upload.BLOCK_SLACK_BYTES)


async def test_a_retried_put_block_sends_the_whole_block_again() -> None:
    """azure-core's retry seeks the body back to where it started: the second attempt of a Put
    Block that failed (500) is the same bytes and MD5 as the first, and the upload succeeds. (A
    local aiohttp server: Azurite cannot be made to fail one request.)"""
    attempts: list[tuple[str | None, bytes, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        if request.query.get("comp") == "block":
            attempts.append((request.query.get("blockid"), body, request.headers.get("Content-MD5")))
            if len(body) == B and len(attempts) == len({a[0] for a in attempts}):  # a whole block, first try
                return web.Response(status=500)
        return web.Response(status=201, headers={"x-ms-request-id": "r", "x-ms-version": "2026-10-06"})

    app = web.Application(client_max_size=2 * B)
    app.router.add_route("PUT", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    data = content(B + 10)
    try:
        async with BlobClient(
            f"http://127.0.0.1:{port}/devstoreaccount1",
            "c",
            "b.bin",
            credential=AzureNamedKeyCredential("devstoreaccount1", base64.b64encode(b"key").decode()),
            retry_total=2,
            retry_backoff_factor=0,
            initial_backoff=0,
        ) as client:
            await upload(client, data, MemoryBudget(64 * 1024 * 1024))
    finally:
        await runner.cleanup()
    whole = [a for a in attempts if len(a[1]) == B]
    assert len(whole) == 2 and whole[0] == whole[1] and whole[0][1] == data[:B]
    assert whole[0][2] == base64.b64encode(hashlib.md5(data[:B]).digest()).decode()
    assert [a[1] for a in attempts if len(a[1]) != B] == [data[B:]]  # the last 10 bytes, once
