"""Save a run's files: streamed to disk, sha256 checked against the answer, never overwriting by accident.

A file is written to a hidden `.<name>.<random>.part` next to its target and only takes the target's
name once its bytes and hash match the answer; without `overwrite` that last step is a hard link, which
fails (atomically) if the name was taken meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pathvalidate import sanitize_filename

from ci_files_client.errors import CliError

CHUNK_BYTES = 1 << 20


def safe_local_name(filename: str, fallback: str) -> str:
    """The service's file name as a safe name on any OS: its last path segment, without characters or
    names that Windows, macOS or Linux refuse (pathvalidate), never `.`/`..` or empty."""
    last = filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = sanitize_filename(last, platform="universal", max_len=200).strip()
    if name in ("", ".", ".."):
        name = sanitize_filename(fallback, platform="universal", max_len=200) or "file"
    return name


@dataclass(frozen=True)
class Saved:
    path: Path
    bytes: int
    sha256: str


def target_for(out_dir: Path, file: dict[str, Any], taken: set[str]) -> Path:
    """Where a file goes: its safe name; a second file of the same name in one run gets ` (2)` etc."""
    name = safe_local_name(str(file.get("filename") or ""), str(file.get("file_id") or "file"))
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        stem, extension = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem} ({n}){'.' + extension if extension else ''}"
    taken.add(candidate.lower())
    return out_dir / candidate


def check_free(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise CliError("file_exists", f"{target} already exists and was left as it is")


def download(
    http: httpx.Client,
    file: dict[str, Any],
    target: Path,
    *,
    overwrite: bool,
    on_bytes: Callable[[int], None],
) -> Saved:
    """Stream `file["url"]` to `target`; the sha256 and size must match the answer."""
    check_free(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f".{target.name[:50]}.", suffix=".part", dir=target.parent)
    part = Path(part_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as sink, http.stream("GET", str(file["url"])) as response:
            if response.status_code in (403, 404):
                raise CliError("link_expired", f"the link of {file.get('filename')} answered {response.status_code}")
            if response.status_code != 200:
                raise CliError("download_failed", f"the link of {file.get('filename')} answered {response.status_code}")
            for chunk in response.iter_bytes(CHUNK_BYTES):
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
        sha256 = digest.hexdigest()
        if sha256 != file.get("sha256") or size != file.get("bytes"):
            raise CliError(
                "checksum_mismatch",
                f"{file.get('filename')}: got {size} bytes with sha256 {sha256[:12]}..., "
                f"the service said {file.get('bytes')} bytes with {str(file.get('sha256'))[:12]}...",
            )
        _publish(part, target, overwrite)
        return Saved(path=target, bytes=size, sha256=sha256)
    except httpx.TransportError as error:
        raise CliError("download_failed", f"{file.get('filename')}: {type(error).__name__}") from None
    finally:
        part.unlink(missing_ok=True)


def _publish(part: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(part, target)
        return
    try:
        os.link(part, target)
    except FileExistsError:
        raise CliError("file_exists", f"{target} already exists and was left as it is") from None
    except OSError:  # a file system without hard links: check, then rename (not atomic, still checked)
        check_free(target, overwrite)
        os.rename(part, target)
