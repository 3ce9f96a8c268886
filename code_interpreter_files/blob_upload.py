"""The streamed block upload: a file's bytes go into one blob as they arrive, within the worker's memory budget.

Apart from the clients that use it (storage.py, copying.py), as azure-storage-blob keeps its upload
helpers apart from its clients.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient

from .errors import FileCopyError
from .memory_budget import Grant, MemoryBudget
from .naming import content_disposition

MIB = 1024 * 1024
# Measured with `python -m bench.tune`: with 2-8 MiB blocks and 2-8 in flight a copy takes the same
# time within the noise (Azurite's CPU is the limit there), 1 in flight is 15-30% slower. Real
# storage has latency that bytes in flight hide, so keep several in flight.
BLOCK_BYTES = 4 * MIB
BLOCKS_IN_FLIGHT = 4  # staged concurrently while the next block downloads
# Why not azure-storage-blob's own `upload_blob(async_iterable, max_concurrency=4)`: measured with
# `python -m bench --only uploader` (same 1 MiB chunks, same block size, blocks in flight and block
# MD5s, a fresh process each, 256 MiB; docs/benchmarks.md, 2026-12-07): on loopback ours took 1.70 s
# against 1.81 s with a 19 MiB peak against 56 MiB; through the simulated network (20 ms, 40 MiB/s
# per connection) 2.86 s against 2.90 s, 18 MiB against 53 MiB. And the SDK cannot keep the
# guarantees: it takes the metadata before the first byte (the sha256 would need a second request
# after the blob is already visible), it cannot reserve and release the worker's memory budget per
# block, and an iterable of unknown length always costs Put Block + Put Block List, even for a
# small chart that ours sends in one Put Blob.

# Memory (issue 22). A block is the download's own chunks, never joined, and goes out in
# SEND_SLICE_BYTES writes: aiohttp writes a bytes body in one call, asyncio's TLS transport then
# encrypts all of it at once: the process held each block two to three times over (the joined copy,
# its ciphertext, the socket transport's buffer of what the kernel had not taken yet). Measured
# (2026-12-07, shared 2-core machine, load 4-7), peak RSS growth of a fresh process:
#   one copy of 64 MiB-1 GiB (bench stage 2): 52-55 MiB joined and written whole -> 15-21 MiB now;
#   20 runs x 4 files at once, COPY_MEMORY_MB=512 (stage 7): 16 MiB files 704 MiB -> 454 MiB;
#   64 MiB files 379-533 MiB over 7 runs (5 GiB copied each; joined, that load never finished here).
# What one staged block costs against the budget: its bytes, plus BLOCK_SLACK_BYTES for what sending
# it and reading the next one hold beside them (one slice of ciphertext per connection, the download
# chunk being assembled by httpx). The 64 MiB load then reserved at most 510 MiB and held the 379-533
# above: what the budget counts, and the runs' own objects and connections besides (the goal allows
# COPY_MEMORY_MB + 64 MiB). A small file (one Put Blob) reserves twice its size rounded up to
# RESERVE_UNIT_BYTES: its bytes joined, and their ciphertext (the SDK sends that body in one write).
# No allocator setting is needed: MALLOC_ARENA_MAX=2 in the worker's environment took the 64 MiB load
# from 501 and 490 MiB to 469 and 476 (alternating runs); MALLOC_MMAP_THRESHOLD_=131072 or
# MALLOC_ARENA_MAX=2 took the 16 MiB load from 454 to 336 and 338 (one run each).
BLOCK_SLACK_BYTES = 1 * MIB
SMALL_FILE_MEMORY_FACTOR = 2
RESERVE_UNIT_BYTES = 64 * 1024
# 64 KiB, 256 KiB and 1 MiB slices copied 256 MiB in the same time (2.17, 2.18, 2.18 s, median of 3,
# `python -m bench.tune`); the smallest held the least (22.2 against 22.7 and 26.2 MiB).
SEND_SLICE_BYTES = 64 * 1024
# Every Put Block carries its block's MD5 (Content-MD5): Blob Storage checks it on arrival and refuses
# a block that changed on the way (400 Md5Mismatch), and Azurite then hashes it with Node's native MD5
# instead of its JavaScript CRC64 of every block without one (66 against 613 MiB/s, measured). Without
# it, Azurite's single thread was the limit of the 80-copy load at 64 MiB files: it stopped answering
# new connections, which timed out after 20 s, in 4 of 4 tries; with it, both modes copied all 5 GiB.
# Cost: MD5 of every byte in the worker, 594 MiB/s here (sha256, which the file needs anyway: 978),
# in a worker thread (`_put_block`): 256 MiB copies took 2.23 s against 2.33 s with the MD5 on the
# event loop (median of 6, alternating, fresh processes).


class _BlockBody:
    """One block's bytes as a Put Block body: the download's chunks (bytes or views of them), sent
    in SEND_SLICE_BYTES slices without copying (aiohttp writes an async iterable piece by piece and
    waits for the connection to drain between pieces). `read`, `tell` and `seek` are there for
    azure-core's retry, which notes the position before the first attempt and seeks back to it."""

    def __init__(self, chunks: list[bytes | memoryview], size: int) -> None:
        self._chunks = chunks
        self.size = size
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self.size}[whence]
        self._position = max(0, min(self.size, base + offset))
        return self._position

    def _pieces(self, limit: int, want: int) -> Iterator[memoryview]:
        """From the current position, `want` bytes at most, in views of `limit` bytes at most
        (never across two chunks); the position moves past each one as it is taken."""
        skip = self._position
        for chunk in self._chunks:
            view = memoryview(chunk)
            if skip >= len(view):
                skip -= len(view)
                continue
            start, skip = skip, 0
            while start < len(view) and want > 0:
                piece = view[start : start + min(limit, want)]
                start += len(piece)
                want -= len(piece)
                self._position += len(piece)
                yield piece
            if want <= 0:
                return

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative), copied: only for a transport that reads."""
        left = self.size - self._position
        want = left if size < 0 else min(size, left)
        return b"".join(self._pieces(want, want)) if want > 0 else b""

    def __aiter__(self) -> _Slices:
        return _Slices(self._pieces(SEND_SLICE_BYTES, self.size - self._position))


class _Slices:
    """What aiohttp iterates. Not an async generator: one left unfinished by a cancelled request
    would be closed later by a task of the event loop's finalizer, after the copy has ended."""

    def __init__(self, pieces: Iterator[memoryview]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> _Slices:
        return self

    async def __anext__(self) -> memoryview:
        try:
            return next(self._pieces)
        except StopIteration:
            raise StopAsyncIteration from None


def _md5(pieces: list[bytes | memoryview]) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in pieces:
        md5.update(piece)
    return md5.digest()


async def _put_block(
    client: BlobClient, block_id: str, body: IO[bytes], size: int, pieces: list[bytes | memoryview]
) -> None:
    """Put Block with the block's MD5, hashed in a worker thread (hashlib lets go of the GIL for
    large buffers): off the event loop, which sends and receives every other copy's bytes."""
    md5 = await asyncio.to_thread(_md5, pieces)
    await client.stage_block(block_id, body, length=size, transactional_content_md5=md5)


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

    Memory stays flat whatever the size: BLOCK_BYTES * (BLOCKS_IN_FLIGHT + 1) of the download's
    own chunks (never copied: `_BlockBody` sends them in slices) plus a few MiB. Across copies
    the worker-wide `budget` bounds it: each block reserves BLOCK_BYTES + BLOCK_SLACK_BYTES before
    its first byte is read and gives it back when its stage request completes (a small file
    reserves twice its announced size), so copies wait for memory instead of exhausting it.
    Nothing is visible at `blob` until the commit: a stream that fails midway leaves only
    uncommitted blocks, which the service discards. Block ids carry a per-attempt prefix so two
    copies of the same file never mix their blocks; each block carries its MD5, which the service
    checks.
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
        """What the next block will hold: a block staged (its bytes, sent in slices), or a small
        file's announced size (joined, then sent in one write)."""
        left = BLOCK_BYTES if expected_bytes is None else max(0, min(BLOCK_BYTES, expected_bytes - staged))
        if block_ids or left == BLOCK_BYTES:
            return left + BLOCK_SLACK_BYTES
        return SMALL_FILE_MEMORY_FACTOR * -(-left // RESERVE_UNIT_BYTES) * RESERVE_UNIT_BYTES

    async def stage(data: list[bytes | memoryview], size: int, held: Grant) -> None:
        nonlocal staged
        block_id = base64.b64encode(f"{attempt}-{len(block_ids):08d}".encode()).decode()
        block_ids.append(block_id)
        staged += size
        # The SDK hands the body to azure-core and aiohttp as it is: typed as the file it reads like.
        body = cast(IO[bytes], _BlockBody(data, size))
        task = asyncio.ensure_future(_put_block(client, block_id, body, size, data))
        task.add_done_callback(lambda _: held.release())  # runs even if cancelled before it started
        pending.add(task)
        if len(pending) >= BLOCKS_IN_FLIGHT:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.difference_update(done)
            for finished in done:
                finished.result()

    grant: Grant | None = await budget.acquire(block_cost())
    try:
        buffer: list[bytes | memoryview] = []  # the next block: the download's chunks, not copied
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
                # Only a chunk that crosses the boundary is cut, into two views of it (none when
                # BLOCK_BYTES is a multiple of the download chunk, as it is).
                over = buffered - BLOCK_BYTES
                data, buffer, buffered = buffer, [], over
                if over:
                    last = memoryview(data[-1])
                    data[-1], buffer = last[: len(last) - over], [last[len(last) - over :]]
                assert grant is not None
                held, grant = grant, None
                await stage(data, BLOCK_BYTES, held)
                del data
                grant = await budget.acquire(block_cost())
        if buffered and block_ids:
            assert grant is not None
            held, grant = grant, None
            await stage(buffer, buffered, held)
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
            whole = b"".join(buffer)
            await client.upload_blob(whole, overwrite=True, content_settings=settings, metadata=stored_metadata)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if grant is not None:
            grant.release()
    return StoredBlob(bytes=total, sha256=digest)
