"""Safe, deterministic blob names and download headers for filenames the model chose (untrusted)."""

from __future__ import annotations

import hashlib
import mimetypes
import re
import unicodedata
from urllib.parse import quote, unquote

MANIFEST_NAME = "manifest.json"
# What earlier versions kept under a run's prefix (now in the runs table): read and deleted, never written.
LEGACY_BOOKKEEPING = {"run_info": "run.json", "lock": "lock", "tombstone": "deleted"}
MAX_FILENAME_CHARS = 120
_MAX_EXTENSION_CHARS = 16
RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9_-]{1,120}")
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ALLOWED_PUNCTUATION = frozenset(" ._-()+,@=[]&'!~")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Blob Storage's naming rules: 1 to 1,024 characters, at most 254 path segments (flat namespace).
MAX_BLOB_NAME_CHARS = 1024
MAX_BLOB_SEGMENTS = 254


def is_valid_response_id(value: str) -> bool:
    return RESPONSE_ID.fullmatch(value) is not None


def is_plain_id(value: object) -> bool:
    """A container or file id as Azure OpenAI makes them (`cntr_...`, `cfile_...`). Anything else in a
    citation is refused before it can become part of a URL path (`..`, `/content`, `%2F` ...)."""
    return isinstance(value, str) and PLAIN_ID.fullmatch(value) is not None


def _fully_decoded(text: str) -> str:
    """`text` percent-decoded until nothing changes (`%252e` -> `%2e` -> `.`). Each round that changes
    something shortens the text, so a name of 1,024 characters takes at most a few hundred rounds."""
    while (decoded := unquote(text)) != text:
        text = decoded
    return text


def _segment_problem(segment: str, *, decoded: bool) -> str | None:
    encoded = " (percent-encoded)" if decoded else ""
    if segment == "":
        return "has an empty path segment (a leading, doubled or trailing '/')"
    if "/" in segment:  # only a decoded segment can hold one: %2F
        return "has a percent-encoded '/' (%2F)"
    if "\\" in segment:
        return f"contains a backslash{encoded}"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in segment):
        return f"contains a control character or a lone surrogate{encoded}"
    if segment in (".", ".."):
        return f"has a '{segment}' segment{encoded}"
    if segment.endswith("."):
        return f"has a path segment ending with '.'{encoded} (Blob Storage's naming rules advise against it)"
    return None


def blob_path_problem(name: str) -> str | None:
    """Why `name` is not a plain relative blob path, or None when it is one.

    A plain path is 1 to 1,024 characters in at most 254 segments separated by single '/', none of
    them empty, '.', '..' or ending with '.', with no backslash, control character or lone surrogate.
    Names are taken literally (the SDK sends a '%' as %25), and a name is refused all the same when
    its percent-decoded form breaks a rule (`%2e%2e`, `%2f`, `%5c`, `%00`, `%252e%252e`): no layer
    that decodes once more (a proxy, a log reader, a future SDK) can see a different path.
    """
    if not name:
        return "is empty"
    if len(name) > MAX_BLOB_NAME_CHARS:
        return f"is longer than {MAX_BLOB_NAME_CHARS} characters (Blob Storage's limit)"
    if name.startswith("/"):
        return "starts with '/'"
    segments = name.split("/")
    if len(segments) > MAX_BLOB_SEGMENTS:
        return f"has more than {MAX_BLOB_SEGMENTS} path segments (Blob Storage's limit)"
    for segment in segments:
        problem = _segment_problem(segment, decoded=False)
        if problem is None and "%" in segment:
            problem = _segment_problem(_fully_decoded(segment), decoded=True)
        if problem is not None:
            return problem
    return None


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
