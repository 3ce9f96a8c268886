"""Safe, deterministic blob names and download headers for filenames the model chose (untrusted)."""

from __future__ import annotations

import hashlib
import mimetypes
import re
import unicodedata
from urllib.parse import quote

MANIFEST_NAME = "manifest.json"
# What earlier versions kept under a run's prefix (now in the runs table): read and deleted, never written.
LEGACY_BOOKKEEPING = {"run_info": "run.json", "lock": "lock", "tombstone": "deleted"}
MAX_FILENAME_CHARS = 120
_MAX_EXTENSION_CHARS = 16
RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9_-]{1,120}")
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ALLOWED_PUNCTUATION = frozenset(" ._-()+,@=[]&'!~")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def is_valid_response_id(value: str) -> bool:
    return RESPONSE_ID.fullmatch(value) is not None


def is_plain_id(value: object) -> bool:
    """A container or file id as Azure OpenAI makes them (`cntr_...`, `cfile_...`). Anything else in a
    citation is refused before it can become part of a URL path (`..`, `/content`, `%2F` ...)."""
    return isinstance(value, str) and PLAIN_ID.fullmatch(value) is not None


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (which JSON escapes can carry, UTF-8 cannot) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def run_prefix(response_id: str) -> str:
    """Every blob of a run lives under its response id (validated: one plain path segment)."""
    if not is_valid_response_id(response_id):
        raise ValueError("not a response id")
    return response_id


def manifest_blob(response_id: str) -> str:
    return f"{run_prefix(response_id)}/{MANIFEST_NAME}"


def _id_segment(file_id: str) -> str:
    """The file id when it is a plain id; a hash otherwise ('~' never appears in a plain id)."""
    if PLAIN_ID.fullmatch(file_id):
        return file_id
    return "~" + hashlib.sha256(file_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def safe_filename(name: str | None) -> str:
    """The base name a user sees: no directories, no control characters, bounded length.

    Letters and digits of any script stay; other characters become '_'. The result never
    starts or ends with a dot or a space, so it is never '.', '..' or hidden.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = text.replace("\\", "/").rstrip("/")
    text = text.rsplit("/", 1)[-1]
    cleaned = "".join(
        c if (unicodedata.category(c)[0] in "LN" or c in _ALLOWED_PUNCTUATION) else "_"
        for c in text
        if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    )
    cleaned = re.sub(r"\s+", " ", cleaned).strip(" .")
    if not cleaned.strip("_"):
        return "file"
    if len(cleaned) > MAX_FILENAME_CHARS:
        stem, dot, extension = cleaned.rpartition(".")
        if dot and 0 < len(extension) <= _MAX_EXTENSION_CHARS and stem:
            cleaned = stem[: MAX_FILENAME_CHARS - len(extension) - 1].rstrip(" .") + "." + extension
        else:
            cleaned = cleaned[:MAX_FILENAME_CHARS].rstrip(" .")
    return cleaned or "file"


def blob_name(response_id: str, file_id: str, filename: str) -> str:
    """`<response id>/<file id>/<safe name>`: unique per file, the same on every copy of a run."""
    return f"{run_prefix(response_id)}/{_id_segment(file_id)}/{safe_filename(filename)}"


def content_type_for(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the RFC 6266 / 5987 `filename*` for the real name."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(valid_unicode(filename), safe='')}"
    return header
