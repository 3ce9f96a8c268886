"""Real PNG files: small ones of an exact size for the emulator's ``code_interpreter_call`` image outputs
in tests, and any RGB picture (``encode_rgb``: the stand-in's charts, local_azure/chart.py).

Hand-written (stdlib ``zlib`` + ``struct``) because the need is tiny: a valid 4x4 RGB image whose
pixels depend on a seed, stored without compression so every seed gives the same size, and padded
to the size a test asks for with a ``tEXt`` chunk (decoders skip it).
"""

from __future__ import annotations

import hashlib
import struct
import zlib

SIDE = 4
SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_OVERHEAD = 12  # length, type, crc
_KEYWORD = b"Comment\x00"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _core(seed: str) -> tuple[bytes, bytes, bytes]:
    colour = hashlib.shake_256(seed.encode()).digest(3 * SIDE * SIDE)
    rows = b"".join(b"\x00" + colour[y * 3 * SIDE : (y + 1) * 3 * SIDE] for y in range(SIDE))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0))
    return header, _chunk(b"IDAT", zlib.compress(rows, 0)), _chunk(b"IEND", b"")


def _base(seed: str) -> int:
    return len(SIGNATURE) + sum(len(c) for c in _core(seed))


MINIMUM = _base("")  # the same for every seed (stored, not compressed)
#: The smallest padded size: anything from here up can be made, and ``MINIMUM`` itself.
MINIMUM_PADDED = MINIMUM + _CHUNK_OVERHEAD + len(_KEYWORD)


def png_of_size(size: int, seed: str) -> bytes:
    """A valid PNG of exactly ``size`` bytes: ``MINIMUM``, or ``MINIMUM_PADDED`` and more."""
    header, data, end = _core(seed)
    if size == MINIMUM:
        return SIGNATURE + header + data + end
    if size < MINIMUM_PADDED:
        raise ValueError(f"a PNG here is {MINIMUM} bytes or at least {MINIMUM_PADDED}, not {size}")
    text = _KEYWORD + b"x" * (size - MINIMUM_PADDED)
    return SIGNATURE + header + _chunk(b"tEXt", text) + data + end


def encode_rgb(width: int, height: int, pixels: bytes | bytearray) -> bytes:
    """A PNG of an 8-bit RGB picture given row by row (``width * height * 3`` bytes, no filter)."""
    stride = width * 3
    if width < 1 or height < 1 or len(pixels) != stride * height:
        raise ValueError(f"{len(pixels)} bytes are not a {width}x{height} RGB picture")
    rows = b"".join(b"\x00" + bytes(pixels[y * stride : (y + 1) * stride]) for y in range(height))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return SIGNATURE + header + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b"")
