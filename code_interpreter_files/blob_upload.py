"""The streamed block upload: a file's bytes go into one blob as they arrive, within the worker's memory budget.

Apart from the clients that use it (storage.py, copying.py), as azure-storage-blob keeps its upload
helpers apart from its clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient

from .errors import FileCopyError
from .memory_budget import Grant, MemoryBudget
from .naming import content_disposition

MIB = 1024 * 1024
# Measured with `python -m bench.tune`: with 2-8 MiB blocks and 2-8 in flight a copy takes the same
# time within the noise (Azurite's CPU is the limit there), 1 in flight is 15-30% slower; each block
# in flight costs about twice its size (TLS buffers): 4 x 4 MiB peaks at ~52 MiB per copy, 8 x 4 or
# 4 x 8 MiB at 85-110 MiB. Real storage has latency that bytes in flight hide, so keep the most that
# stay within the 64 MiB memory goal.
BLOCK_BYTES = 4 * MIB
BLOCKS_IN_FLIGHT = 4  # staged concurrently while the next block downloads
# Why not azure-storage-blob's own `upload_blob(async_iterable, max_concurrency=4)`: measured with
# `python -m bench --only uploader` (same 1 MiB chunks, same block size and blocks in flight, a
# fresh process each, 256 MiB; docs/benchmarks.md): through the simulated network (20 ms, 40 MiB/s
# per connection) ours took 9.95 s against 12.86 s (0.77x) with a 50 MiB peak against 58 MiB; on
# loopback 8.16 s against 7.73 s (1.06x, Azurite-bound, within the noise). And the SDK cannot keep
# the guarantees: it takes the metadata before the first byte (the sha256 would need a second
# request after the blob is already visible), it cannot reserve and release the worker's memory
# budget per block, and an iterable of unknown length always costs Put Block + Put Block List,
# even for a small chart that ours sends in one Put Blob.
# What one block costs against the worker's memory budget (COPY_MEMORY_MB): twice its size, the
# block itself plus the TLS layer's ciphertext of it while it is sent (the ~52 MiB peak above for
# 5 blocks of 4 MiB). A small file reserves its size, rounded up to this unit.
BLOCK_MEMORY_FACTOR = 2
RESERVE_UNIT_BYTES = 64 * 1024


@dataclass(frozen=True)
class StoredBlob:
    bytes: int
    sha256: str


async def upload_stream(
    client: BlobClient,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    expected_bytes: int | None,
    filename: str,
    content_type: str,
    metadata: dict[str, str],
    budget: MemoryBudget,
) -> StoredBlob:
    """Stage blocks as the bytes arrive, commit once at the end (a file smaller than one block
    goes up in one Put Blob once every byte arrived).

    Memory stays flat whatever the size: about twice BLOCK_BYTES * (BLOCKS_IN_FLIGHT + 1) (the
    TLS layer holds each request's ciphertext too) plus ~10 MiB. Across copies the worker-wide
    `budget` bounds it: each block reserves BLOCK_MEMORY_FACTOR x its size before its first byte
    is read and gives it back when its stage request completes (a small file reserves its
    announced size only), so copies wait for memory instead of exhausting it. Nothing is visible
    at `blob` until the commit: a stream that fails midway leaves only uncommitted blocks, which
    the service discards. Block ids carry a per-attempt prefix so two copies of the same file
    never mix their blocks.
    """
    attempt = uuid.uuid4().hex
    hasher = hashlib.sha256()
    block_ids: list[str] = []
    pending: set[asyncio.Task[Any]] = set()
    total = 0
    staged = 0

    def interrupted(expected: int) -> FileCopyError:
        return FileCopyError(
            "download_interrupted", f"got {total} of {expected} bytes; ask again to retry", retryable=True
        )

    def block_cost() -> int:
        """What the next block will hold: a whole block, or what is left of an announced size."""
        size = BLOCK_BYTES if expected_bytes is None else max(0, min(BLOCK_BYTES, expected_bytes - staged))
        return BLOCK_MEMORY_FACTOR * -(-size // RESERVE_UNIT_BYTES) * RESERVE_UNIT_BYTES

    async def stage(data: bytes, held: Grant) -> None:
        nonlocal staged
        block_id = base64.b64encode(f"{attempt}-{len(block_ids):08d}".encode()).decode()
        block_ids.append(block_id)
        staged += len(data)
        task = asyncio.ensure_future(client.stage_block(block_id, data, length=len(data)))
        task.add_done_callback(lambda _: held.release())  # runs even if cancelled before it started
        pending.add(task)
        if len(pending) >= BLOCKS_IN_FLIGHT:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.difference_update(done)
            for finished in done:
                finished.result()

    grant: Grant | None = await budget.acquire(block_cost())
    try:
        buffer: list[bytes] = []
        buffered = 0
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise FileCopyError("file_too_large", f"the file is larger than MAX_FILE_BYTES ({max_bytes} bytes)")
            if expected_bytes is not None and total > expected_bytes:  # fail now, not after the upload
                raise interrupted(expected_bytes)
            hasher.update(chunk)
            buffer.append(chunk)
            buffered += len(chunk)
            while buffered >= BLOCK_BYTES:
                # Split only the chunk that crosses the boundary (none when BLOCK_BYTES is a
                # multiple of the download chunk, as it is): one copy of the block, not three.
                over = buffered - BLOCK_BYTES
                last = buffer[-1]
                rest = last[len(last) - over :] if over else b""
                buffer[-1] = last[: len(last) - over]
                data = b"".join(buffer)
                buffer, buffered = ([rest] if rest else []), over
                assert grant is not None
                held, grant = grant, None
                await stage(data, held)
                del data
                grant = await budget.acquire(block_cost())
        if buffered and block_ids:
            assert grant is not None
            held, grant = grant, None
            await stage(b"".join(buffer), held)
            buffer, buffered = [], 0
        if pending:
            await asyncio.gather(*pending)
            pending.clear()

        if expected_bytes is not None and total != expected_bytes:
            raise interrupted(expected_bytes)
        digest = hasher.hexdigest()
        settings = ContentSettings(content_type=content_type, content_disposition=content_disposition(filename))
        stored_metadata = {**metadata, "sha256": digest}
        if block_ids:
            blocks = [BlobBlock(block_id=i) for i in block_ids]
            await client.commit_block_list(blocks, content_settings=settings, metadata=stored_metadata)
        else:  # the whole file fits one block (most charts and tables): one Put Blob instead of two requests
            data = b"".join(buffer)
            await client.upload_blob(data, overwrite=True, content_settings=settings, metadata=stored_metadata)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if grant is not None:
            grant.release()
    return StoredBlob(bytes=total, sha256=digest)
