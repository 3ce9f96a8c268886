"""Read what the model said: its text, the files it cited, the containers it used; link the files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from .models import Citation

SANDBOX_PREFIX = "sandbox:"
_SANDBOX_LINK = re.compile(r"sandbox:(/mnt/data/[^\s)\]\"'<>]+)")


def _items(response: Any) -> list[dict[str, Any]]:
    """The output items as plain dicts: tolerant of fields the SDK does not model."""
    output = getattr(response, "output", None) or []
    return [item.model_dump() if hasattr(item, "model_dump") else dict(item) for item in output]


def _output_texts(response: Any) -> Iterable[dict[str, Any]]:
    for item in _items(response):
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    yield part


def answer_text(response: Any) -> str:
    return "\n\n".join(part.get("text") or "" for part in _output_texts(response))


def container_ids(response: Any) -> list[str]:
    """Containers the run's Code Interpreter calls used, in order, without repeats."""
    seen: dict[str, None] = {}
    for item in _items(response):
        if item.get("type") == "code_interpreter_call" and isinstance(item.get("container_id"), str):
            seen.setdefault(item["container_id"], None)
    return list(seen)


def file_citations(response: Any) -> list[Citation]:
    """Every `container_file_citation`, deduplicated by file id, first citation wins."""
    found: dict[str, Citation] = {}
    for part in _output_texts(response):
        for annotation in part.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("type") != "container_file_citation":
                continue
            file_id, container_id = annotation.get("file_id"), annotation.get("container_id")
            if not isinstance(file_id, str) or not file_id or not isinstance(container_id, str):
                continue
            filename = annotation.get("filename")
            found.setdefault(file_id, Citation(container_id, file_id, filename if isinstance(filename, str) else None))
    return list(found.values())


def is_id_like(filename: str | None, file_id: str) -> bool:
    """Real citations sometimes name the file by its id (`cfile_...` or `cfile_....png`)."""
    if not filename:
        return True
    return filename == file_id or filename.startswith(file_id + ".")


def link_files(text: str, urls: Mapping[str, str]) -> str:
    """Replace each `sandbox:/mnt/data/<name>` link that names a copied file (by its container path)."""

    def replace(match: re.Match[str]) -> str:
        path, tail = match.group(1), ""
        while path[-1] in ".,;:!?" and path not in urls and unquote(path) not in urls:
            path, tail = path[:-1], path[-1] + tail  # a link at the end of a sentence
        url = urls.get(path) or urls.get(unquote(path))
        return url + tail if url else match.group(0)

    # Paths with characters the link pattern stops at (spaces) are replaced literally first.
    for path in sorted(urls, key=len, reverse=True):
        if not _SANDBOX_LINK.fullmatch(SANDBOX_PREFIX + path):
            text = text.replace(SANDBOX_PREFIX + path, urls[path])
            text = text.replace(SANDBOX_PREFIX + quote(path), urls[path])
    return _SANDBOX_LINK.sub(replace, text)
