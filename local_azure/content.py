"""Deterministic, fast pseudo-random file content for the emulator and the tests.

The byte stream for ``(seed, size)`` is a sequence of 1 MiB blocks: every block is the same
base block (``random.Random(seed).randbytes``) whose first 8 bytes are XORed with the block
index (big endian), so reordered or duplicated blocks change the hash. The last block is
truncated to ``size``. The stream does not depend on the ``chunk_size`` used to read it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache

BLOCK = 1 << 20  # 1 MiB generation grid (independent of the read chunk size)


@lru_cache(maxsize=32)
def _base_block(seed: str) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def _block(seed: str, index: int) -> bytes:
    base = _base_block(seed)
    head = int.from_bytes(base[:8], "big") ^ index
    return head.to_bytes(8, "big") + base[8:]


def _blocks(seed: str, size: int) -> Iterator[bytes]:
    """Yield the stream in 1 MiB grid blocks (last one truncated)."""
    full, rest = divmod(size, BLOCK)
    for i in range(full):
        yield _block(seed, i)
    if rest:
        yield _block(seed, full)[:rest]


def chunks(seed: str, size: int, chunk_size: int = BLOCK) -> Iterator[bytes]:
    """Yield the ``size`` bytes for ``seed`` as chunks of ``chunk_size`` (last one shorter)."""
    if size < 0 or chunk_size <= 0:
        raise ValueError("size must be >= 0 and chunk_size > 0")
    if chunk_size == BLOCK:
        yield from _blocks(seed, size)
        return
    buf = bytearray()
    for block in _blocks(seed, size):
        buf += block
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    if buf:
        yield bytes(buf)


def data_chunks(data: bytes, chunk_size: int = BLOCK) -> Iterator[bytes]:
    """Yield literal ``data`` in chunks of ``chunk_size``."""
    view = memoryview(data)
    for start in range(0, len(data), chunk_size):
        yield bytes(view[start : start + chunk_size])


def generate(seed: str, size: int) -> bytes:
    """Return the whole stream for ``(seed, size)`` (for small files in tests)."""
    return b"".join(_blocks(seed, size))


@lru_cache(maxsize=256)
def sha256_of(seed: str, size: int) -> str:
    """Hex SHA-256 of the ``(seed, size)`` stream."""
    h = hashlib.sha256()
    for block in _blocks(seed, size):
        h.update(block)
    return h.hexdigest()
