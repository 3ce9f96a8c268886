"""Read what the model said: its text, the files it cited, the containers it used; link the files."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from .models import Citation
from .naming import is_plain_id, valid_unicode

SANDBOX_PREFIX = "sandbox:"
_SANDBOX_LINK = re.compile(r"sandbox:(/mnt/data/[^\s)\]\"'<>]+)")
_SENTENCE_END = ".,;:!?"
_MAX_SENTENCE_END = 8  # a link ends a sentence with a mark or two; a long run of them is no file name


def _items(response: Any) -> list[dict[str, Any]]:
    """The output items as plain dicts: tolerant of fields the SDK does not model."""
    output = getattr(response, "output", None) or []
    # warnings=False: a field of an unexpected type (a hostile citation) is read, not warned about per run
    return [item.model_dump(warnings=False) if hasattr(item, "model_dump") else dict(item) for item in output]


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
        if item.get("type") == "code_interpreter_call" and is_plain_id(item.get("container_id")):
            seen.setdefault(item["container_id"], None)
    return list(seen)


def file_citations(response: Any) -> list[Citation]:
    """Every `container_file_citation`, deduplicated by container and file id, first citation wins.

    Keyed on both ids: a citation of the same file id in a foreign container must not hide the real one.
    Each keeps the `sandbox:` link it covers, which names the file when the container's metadata cannot.
    """
    found: dict[tuple[str, str], Citation] = {}
    for part in _output_texts(response):
        text: str = part["text"] if isinstance(part.get("text"), str) else ""
        annotations = [
            a
            for a in part.get("annotations") or []
            if isinstance(a, dict) and a.get("type") == "container_file_citation"
        ]
        links = list(dict.fromkeys(_SANDBOX_LINK.findall(text)))
        for annotation in annotations:
            file_id, container_id = annotation.get("file_id"), annotation.get("container_id")
            if not isinstance(file_id, str) or not file_id or not isinstance(container_id, str):
                continue
            filename = annotation.get("filename")
            found.setdefault(
                (container_id, file_id),
                Citation(
                    container_id=container_id,
                    file_id=file_id,
                    filename=filename if isinstance(filename, str) else None,
                    sandbox_path=_covered_link(text, annotation, links, alone=len(annotations) == 1),
                ),
            )
    return list(found.values())


def _covered_link(text: str, annotation: dict[str, Any], links: list[str], *, alone: bool) -> str | None:
    """The link inside the citation's span; with zero indices (seen in real answers), the text's only
    link when the citation is the text's only one: never a guess between several."""
    start, end = annotation.get("start_index"), annotation.get("end_index")
    if isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text):
        match = _SANDBOX_LINK.search(text[start:end])
        if match:
            return _strip_sentence_end(match.group(1))
    if alone and len(links) == 1:
        return _strip_sentence_end(links[0])
    return None


def _strip_sentence_end(path: str) -> str:
    stripped = path.rstrip(_SENTENCE_END)
    return stripped if len(path) - len(stripped) <= _MAX_SENTENCE_END and stripped else path


def is_id_like(filename: str | None, file_id: str) -> bool:
    """Real citations sometimes name the file by its id (`cfile_...` or `cfile_....png`)."""
    if not filename:
        return True
    return filename == file_id or filename.startswith(file_id + ".")


def link_files(text: str, urls: Mapping[str, str]) -> str:
    """Replace each `sandbox:/mnt/data/<name>` link that names a copied file (by its container path)."""

    def replace(match: re.Match[str]) -> str:
        path, tail = match.group(1), ""
        # A link at the end of a sentence. Bounded: each step copies the path, so stripping a run of
        # 300,000 dots one by one would hold the worker's event loop for many seconds.
        for _ in range(_MAX_SENTENCE_END):
            if path[-1] not in _SENTENCE_END or path in urls or unquote(path) in urls:
                break
            path, tail = path[:-1], path[-1] + tail
        url = urls.get(path) or urls.get(unquote(path))
        return url + tail if url else match.group(0)

    # Paths with characters the link pattern stops at (spaces) are replaced literally first.
    for path in sorted(urls, key=len, reverse=True):
        if not _SANDBOX_LINK.fullmatch(SANDBOX_PREFIX + path):
            text = text.replace(SANDBOX_PREFIX + path, urls[path])
            text = text.replace(SANDBOX_PREFIX + quote(valid_unicode(path)), urls[path])
    return _SANDBOX_LINK.sub(replace, text)


def image_outputs(response: Any) -> list[tuple[str, str, int, Any]]:
    """`(call id, container id, n, url)` of each image a Code Interpreter call showed (`plt.show()`),
    numbered from 1 per call. They come only with `include=["code_interpreter_call.outputs"]`."""
    found = []
    for item in _items(response):
        if item.get("type") != "code_interpreter_call" or not is_plain_id(item.get("id")):
            continue
        images = [o for o in item.get("outputs") or [] if isinstance(o, dict) and o.get("type") == "image"]
        for n, output in enumerate(images, start=1):
            found.append((item["id"], str(item.get("container_id") or ""), n, output.get("url")))
    return found
