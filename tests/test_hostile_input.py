"""Hostile input: any request body, any filename or file id the model could produce, hostile citations.

Property-based (hypothesis) where the input space is large, listed cases where a known trick matters.
Every body gets a JSON answer (4xx error or a valid run), never a 500; every file of a run maps to
its own valid blob name inside the run's prefix.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
from typing import Any
from urllib.parse import unquote

import pytest
from azure.storage.blob.aio import ContainerClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from code_interpreter_files import blob_upload, http_api, naming
from code_interpreter_files.errors import ServiceError
from code_interpreter_files.http_api import status_of
from code_interpreter_files.input_blobs import BlobReader, InvalidBlobName
from code_interpreter_files.models import MAX_PROMPT_CHARS
from tests import figures
from tests.appclient import AppClient
from tests.helpers import storage_names

# ------------------------------------------------------------------------------------------------
# strategies

#: Characters of every kind, lone surrogates and path punctuation included.
CHARS = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(categories=["Cs"]),
    st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs", "Mn"]),
    st.sampled_from(list("/\\.:~%?#&=\"'<>|*\x00\n\r\t ")),
)
TEXT = st.text(alphabet=CHARS, max_size=40)
LONG_TEXT = st.text(alphabet=CHARS, min_size=100, max_size=3000)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["cited", "all", "", " ", "hi", "CITED"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(1e400),
    LONG_TEXT,
)
REQUEST_LIKE = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries(
        {},
        optional={
            "prompt": FIELD_VALUES,
            "instructions": FIELD_VALUES,
            "collect": FIELD_VALUES,
            "sas_ttl_minutes": FIELD_VALUES,
            "wait": FIELD_VALUES,
        },
    ),
    st.dictionaries(TEXT, JSON_VALUES, max_size=2) | st.just({}),
)


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON as a client could send it: lone surrogates become invalid UTF-8 when not escaped."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def nested(depth: int, kind: str) -> bytes:
    opening, closing = ("[", "]") if kind == "list" else ('{"a":', "}")
    return b'{"prompt": ' + (opening * depth).encode() + b"1" + (closing * depth).encode() + b"}"


LIMIT = http_api.MAX_BODY_BYTES
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(encode, JSON_VALUES, st.booleans()),
    st.builds(encode, REQUEST_LIKE, st.booleans()),
    st.builds(encode, REQUEST_LIKE, st.booleans()),
    st.builds(nested, st.integers(1, 200_000), st.sampled_from(["list", "dict"])),
    # around the size limit: a prompt that is too long (400) or a body that is too big (413)
    st.integers(LIMIT - 40, LIMIT + 40).map(lambda n: b'{"prompt": "' + b"x" * (n - 14) + b'"}'),
    st.integers(LIMIT - 40, LIMIT + 40).map(lambda n: b" " * (n - 15) + b'{"prompt":"hi"}'),
    st.sampled_from(
        [
            b'\xef\xbb\xbf{"prompt": "bom"}',
            '{"prompt": "utf-16"}'.encode("utf-16"),
            b'{"prompt": "\xff\xfe"}',
            b'{"prompt": "\xed\xa0\x80"}',
            b'{"prompt": "\\ud800"}',
            b'{"prompt": "ok", "\\udfff": 1}',
            b'{"prompt": NaN}',
            b'{"prompt": "x", "prompt": 5}',
            b'{"prompt": "x", "sas_ttl_minutes": 1e400}',
            b'{"prompt": "x", "sas_ttl_minutes": ' + b"9" * 5000 + b"}",
            b'{"prompt": "\\u0000"}',
            b"null",
            b'"prompt"',
            b"{}",
            # unknown fields with huge names: the error names them without echoing all of them
            json.dumps({"prompt": "x", **{f"k{i}" * 20_000: 1 for i in range(12)}}).encode(),
        ]
    ),
)
ERROR_CODES = {"invalid_json", "invalid_request", "payload_too_large"}


def check_error_body(body: bytes, status: int) -> dict[str, Any]:
    """A JSON error: `{"error": {"code", "message"}}`, UTF-8, with a bounded message."""
    data = json.loads(body.decode("utf-8"))
    error = data["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert len(error["message"]) <= 2000, f"an error message of {len(error['message'])} characters"
    assert status in (400, 413), status
    assert error["code"] in ERROR_CODES
    return error


# ------------------------------------------------------------------------------------------------
# request parsing


@settings(max_examples=500, deadline=None)
@given(body=BODIES)
def test_any_body_parses_to_a_valid_run_or_a_json_error(body: bytes) -> None:
    figures.count("inputs_hypothesis")
    try:
        request = http_api.parse_run_request(body)
    except ServiceError as error:
        rendered = http_api.json_response(status_of(error), error.body(invocation_id="x"))
        check_error_body(rendered.get_body(), status_of(error))
        assert status_of(error) == 413 or len(body) <= LIMIT
        return
    assert len(body) <= LIMIT
    data = json.loads(body)
    assert isinstance(data, dict) and set(data) <= {"prompt", "instructions", "collect", "sas_ttl_minutes", "wait"}
    assert request.prompt == data["prompt"] and request.prompt.strip()
    assert len(request.prompt) <= MAX_PROMPT_CHARS and request.collect in ("cited", "all")
    assert request.sas_ttl_minutes is None or request.sas_ttl_minutes >= 1
    # what goes to Azure OpenAI is valid Unicode: the SDK must be able to send it
    json.dumps(request.model_dump(), ensure_ascii=False).encode("utf-8")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
async def test_any_body_through_the_function_is_a_json_answer_never_a_500(app: AppClient, body: bytes) -> None:
    figures.count("inputs_hypothesis")
    reply = await app.post_run(raw=body)  # also checked against openapi.yaml
    if reply.status in (200, 202):
        assert reply.json["response_id"].startswith("resp_")
        return
    check_error_body(reply.body, reply.status)


# ------------------------------------------------------------------------------------------------
# filename -> blob name

RESPONSE_IDS = st.from_regex(naming.RESPONSE_ID, fullmatch=True)
PATHISH = st.lists(TEXT, min_size=1, max_size=5).map("/".join) | st.lists(TEXT, min_size=1, max_size=5).map("\\".join)
FILENAMES = st.one_of(TEXT, LONG_TEXT, PATHISH, st.none(), st.sampled_from(["", ".", "..", "...", " . ", "/", "\\"]))
FILE_IDS = st.one_of(
    st.from_regex(r"cfile_[0-9a-f]{32}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True),
    TEXT,
    LONG_TEXT,
    st.sampled_from(["..", ".", "manifest.json", "~abc", "a/b", "", " "]),
)
NOT_IN_A_NAME = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def check_safe_name(name: str) -> None:
    assert 1 <= len(name) <= naming.MAX_FILENAME_CHARS
    assert "/" not in name and "\\" not in name
    assert name not in (".", "..") and name[0] not in ". " and name[-1] not in ". "
    assert not any(unicodedata.category(c) in NOT_IN_A_NAME for c in name), ascii(name)
    name.encode("utf-8")


@settings(max_examples=600, deadline=None)
@given(filename=FILENAMES)
def test_safe_filename_is_safe_deterministic_and_idempotent(filename: str | None) -> None:
    figures.count("inputs_hypothesis")
    safe = naming.safe_filename(filename)
    check_safe_name(safe)
    assert naming.safe_filename(filename) == safe
    # the pipeline applies it again to names it already made safe: that must change nothing
    assert naming.safe_filename(safe) == safe


def check_blob_name(blob: str, response_id: str) -> None:
    assert 1 <= len(blob) <= 1024
    segments = blob.split("/")
    assert len(segments) <= 254 and len(segments) == 3
    assert not blob.startswith("/") and segments[0] == response_id
    assert all(segments) and not any(s.endswith(".") or s in (".", "..") for s in segments), blob
    assert not any(unicodedata.category(c) in NOT_IN_A_NAME for c in blob)
    assert blob != naming.manifest_blob(response_id)
    blob.encode("utf-8")


@settings(max_examples=600, deadline=None)
@given(response_id=RESPONSE_IDS, file_id=FILE_IDS, filename=FILENAMES)
def test_blob_names_are_valid_inside_the_run_and_deterministic(response_id: str, file_id: str, filename: str) -> None:
    figures.count("inputs_hypothesis")
    blob = naming.blob_name(response_id, file_id, filename)
    check_blob_name(blob, response_id)
    assert blob.startswith(naming.run_prefix(response_id) + "/")
    assert naming.blob_name(response_id, file_id, filename) == blob
    # what the copy does: the name shown is made safe first, then the blob name is made from it
    assert naming.blob_name(response_id, file_id, naming.safe_filename(filename)) == blob


@settings(max_examples=300, deadline=None)
@given(
    response_id=RESPONSE_IDS,
    files=st.lists(st.tuples(FILE_IDS, FILENAMES), min_size=2, max_size=12, unique_by=lambda f: f[0]),
    same_name=st.booleans(),
)
def test_distinct_file_ids_never_share_a_blob(
    response_id: str, files: list[tuple[str, str | None]], same_name: bool
) -> None:
    figures.count("inputs_hypothesis")
    blobs = [naming.blob_name(response_id, fid, "same.txt" if same_name else name) for fid, name in files]
    assert len(set(blobs)) == len(blobs), blobs


@settings(max_examples=300, deadline=None)
@given(filename=FILENAMES)
def test_content_disposition_is_a_safe_header_that_names_the_file(filename: str | None) -> None:
    figures.count("inputs_hypothesis")
    safe = naming.safe_filename(filename)
    header = naming.content_disposition(safe)
    assert header.isascii() and header.isprintable(), ascii(header)
    match = re.fullmatch(r'attachment; filename="([^"\\]*)"(?:; filename\*=UTF-8\'\'([A-Za-z0-9%._~-]+))?', header)
    assert match, header
    assert unquote(match.group(2), errors="strict") == safe if match.group(2) else match.group(1) == safe
    # any string at all (not only safe names) still gives a header value that cannot break the headers
    raw = naming.content_disposition(filename or "")
    assert raw.isascii() and raw.isprintable(), ascii(raw)


# ------------------------------------------------------------------------------------------------
# input names -> the URL the SDK sends (issue 18)

#: Names built from the pieces a path trick is made of, and any text.
NAME_PIECES = st.sampled_from(
    [".", "..", "/", "\\", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%00", "%41", "a", "é", "\x00", " "]
)
INPUT_NAMES = st.one_of(st.lists(NAME_PIECES | CHARS, max_size=30).map("".join), PATHISH, TEXT, LONG_TEXT)
ACCOUNT_URLS = ["https://127.0.0.1:10000/devstoreaccount1", "https://account.blob.core.windows.net"]
INPUTS = "code-interpreter-inputs"


@settings(max_examples=1500, deadline=None)
@given(name=INPUT_NAMES)
def test_an_accepted_input_name_is_requested_as_the_input_container_slash_name(name: str) -> None:
    """For any name, either the rule refuses it, or the path aiohttp sends (yarl's parse of the SDK's
    URL, dot segments resolved) decodes to exactly `<account path>/INPUT_CONTAINER/<name>`, which is
    what the service reads (Azurite: decodeURIComponent of the path, split at '/')."""
    figures.count("inputs_hypothesis")
    problem = naming.blob_path_problem(name)
    for account_url in ACCOUNT_URLS:
        reader = BlobReader(ContainerClient(account_url, INPUTS))
        if problem is not None:
            with pytest.raises(InvalidBlobName):
                reader.blob_client(name)
            continue
        client = reader.blob_client(name)  # an accepted name is never refused by the reader's own check
        wire = URL(client.url)  # what aiohttp requests
        assert unquote(wire.raw_path) == f"{URL(account_url).path.rstrip('/')}/{INPUTS}/{name}"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../outputs/x", "has a '..' segment"),
        ("a/./b", "has a '.' segment"),
        ("/outputs/x", "starts with '/'"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("..\\outputs", "backslash"),
        ("a\x00b", "control character"),
        ("a\x9fb", "control character"),
        ("%2e%2e/outputs/x", "has a '..' segment (percent-encoded)"),
        (".%2E/x", "has a '..' segment (percent-encoded)"),
        ("..%2foutputs", "percent-encoded '/'"),
        ("a%2Fb", "percent-encoded '/'"),
        ("a%5cb", "backslash (percent-encoded)"),
        ("a%00b", "control character or a lone surrogate (percent-encoded)"),
        ("%252e%252e/x", "has a '..' segment (percent-encoded)"),
        ("x" * 1025, "longer than 1024 characters"),
        ("a/" * 254 + "b", "more than 254 path segments"),
        ("v1./q3.csv", "ending with '.'"),
        ("", "is empty"),
    ],
)
def test_input_names_that_are_not_plain_paths_are_refused_saying_why(name: str, problem: str) -> None:
    assert problem in (naming.blob_path_problem(name) or "")


@pytest.mark.parametrize(
    "name", ["team/2026/q3.csv", "q3.csv", ".hidden", "données/été 100%.csv", "a%20b.csv", "x" * 1024, "a/" * 253 + "b"]
)
def test_plain_input_names_are_accepted_literally(name: str) -> None:
    assert naming.blob_path_problem(name) is None


# ------------------------------------------------------------------------------------------------
# through the emulator: hostile names in the container, hostile citations

HOSTILE_PATH_NAMES = st.text(alphabet=CHARS, min_size=1, max_size=60).filter(lambda s: "/" not in s)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(HOSTILE_PATH_NAMES, min_size=1, max_size=5),
    cite=st.booleans(),
    subdirs=st.booleans(),
)
async def test_hostile_container_paths_become_distinct_safe_blobs(
    app: AppClient, rig, names: list[str], cite: bool, subdirs: bool
) -> None:
    figures.count("inputs_hypothesis")
    files = [
        {
            "path": f"/mnt/data/{f'd{i}/' if subdirs else ''}{name}",
            "content": f"file {i}: {ascii(name)}",
            "cite": cite,
        }
        for i, name in enumerate(names)
    ]
    info = app.script(files=files)
    reply = await app.post_run(prompt=info["prompt"], collect="all")
    assert reply.status == 200, reply.body
    answer = reply.json
    app.assert_nothing_lost(answer, set(app.expected_files(answer["response_id"])), copied=True)
    blobs = [f["blob"] for f in answer["files"]]
    assert len(set(blobs)) == len(blobs) == len(files)
    for file in answer["files"]:
        check_blob_name(file["blob"], answer["response_id"])
        check_safe_name(file["filename"])
    app.verify_answer(answer)


def citation(file_id: Any, container_id: Any = "$container_id", filename: Any = "x.txt") -> dict[str, Any]:
    return {
        "type": "container_file_citation",
        "container_id": container_id,
        "file_id": file_id,
        "filename": filename,
        "start_index": 0,
        "end_index": 0,
    }


HOSTILE_FILE_IDS = [
    "..",
    ".",
    "../../responses/resp_x",
    "../files",
    "cfile_x/content",
    "%2e%2e",
    "%2F..%2F",
    "a/b",
    "\ud800",
    "cfile_\udfff",
    "x" * 5000,
    "cfile with space",
    "cfile\x00nul",
    "cfile\r\nX-Injected: 1",
    "manifest.json",
    "?limit=100",
    "#frag",
    "é",
]


async def test_hostile_file_ids_in_citations_are_reported_never_fetched(app: AppClient, rig) -> None:
    figures.count("inputs_listed", len(HOSTILE_FILE_IDS) + 4)
    info = app.script(
        files=[{"path": "/mnt/data/ok.txt", "content": "ok"}],
        extra_annotations=[citation(fid) for fid in HOSTILE_FILE_IDS]
        + [citation(42), citation(None), citation(""), citation("cfile_ok", container_id=["$container_id"])],
    )
    before = rig.emulator.stats()["requests"]
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert [f["filename"] for f in answer["files"]] == ["ok.txt"]
    assert len(answer["failed_files"]) == len(HOSTILE_FILE_IDS)
    assert all(f["code"] in ("invalid_citation", "file_not_found") for f in answer["failed_files"])
    requests = rig.emulator.stats()["requests"]
    # only the real file was fetched: no hostile id reached Azure OpenAI as a path
    content, lookup = "GET /containers/{cid}/files/{fid}/content", "GET /containers/{cid}/files/{fid}"
    assert requests[content] - before[content] == 1 and requests[lookup] == before[lookup]
    app.verify_answer(answer)
    # the manifest (written: nothing is worth retrying) gives the same answer again
    again = await app.get_run(answer["response_id"])
    assert again.status == 200 and again.json["failed_files"] == answer["failed_files"]


async def test_a_citation_into_another_container_never_hides_the_real_file(app: AppClient) -> None:
    """The same file id cited first in a foreign container, then in the run's own: copied once."""
    figures.count("inputs_listed", 3)
    info = app.script(
        files=[{"path": "/mnt/data/real.csv", "content": "a,b", "cite": False}],
        extra_annotations=[
            citation("$file_id:0", container_id="cntr_someone_else", filename="stolen.csv"),
            citation("$file_id:0", filename="real.csv"),
            citation("$file_id:0", filename="again.csv"),
        ],
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert [(f["filename"], f["cited"]) for f in answer["files"]] == [("real.csv", True)]
    assert [f["code"] for f in answer["failed_files"]] == ["unknown_container"]
    app.verify_answer(answer)


async def test_thousands_of_citations_are_bounded_work(app: AppClient, rig) -> None:
    """3000 annotations: to foreign containers, to files that do not exist, and the real file again and
    again. One copy, every other citation reported, and a bounded number of calls to Azure OpenAI."""
    figures.count("inputs_listed", 3000)
    extra = (
        [citation(f"cfile_foreign{i}", container_id=f"cntr_other{i}") for i in range(1000)]
        + [citation(f"cfile_ghost{i}") for i in range(1000)]
        + [citation("$file_id:0", filename=f"dup{i}.txt") for i in range(1000)]
    )
    info = app.script(files=[{"path": "/mnt/data/real.txt", "content": "real"}], extra_annotations=extra)
    before = rig.emulator.stats()["requests"]
    started = time.perf_counter()
    reply = await app.post_run(prompt=info["prompt"])
    elapsed = time.perf_counter() - started
    assert reply.status == 200, reply.body
    answer = reply.json
    assert [f["filename"] for f in answer["files"]] == ["real.txt"]
    codes = [f["code"] for f in answer["failed_files"]]
    assert codes.count("unknown_container") == 1000
    assert len(codes) == 2000  # the 1000 ghosts are all reported, as not found or not looked up
    assert set(codes) <= {"unknown_container", "file_not_found", "too_many_files"}
    after = rig.emulator.stats()["requests"]
    lookups = after["GET /containers/{cid}/files/{fid}"] - before["GET /containers/{cid}/files/{fid}"]
    assert lookups <= 20, f"{lookups} file lookups for one run"  # MAX_FILES_PER_RUN
    assert elapsed < 10, elapsed
    app.verify_answer(answer)


async def test_more_files_than_the_limit_copies_the_limit_and_writes_nothing_else(
    app: AppClient, configure, rig
) -> None:
    configure(MAX_FILES_PER_RUN=5)
    info = app.script(
        files=[{"path": f"/mnt/data/c{i:02}.txt", "content": f"cited {i}"} for i in range(4)]
        + [{"path": f"/mnt/data/u{i:02}.txt", "content": f"uncited {i}", "cite": False} for i in range(26)]
    )
    downloads_before = sum(rig.emulator.stats()["downloads"].values())
    answer = (await app.post_run(prompt=info["prompt"], collect="all")).json
    names = [f["filename"] for f in answer["files"]]
    assert names[:4] == [f"c{i:02}.txt" for i in range(4)] and len(names) == 5  # cited files first
    assert {f["code"] for f in answer["failed_files"]} == {"too_many_files"} and len(answer["failed_files"]) == 25
    app.assert_nothing_lost(answer, set(app.expected_files(answer["response_id"])))
    assert sum(rig.emulator.stats()["downloads"].values()) - downloads_before == 5
    assert storage_names(rig, answer["response_id"]) == sorted(
        [f["blob"] for f in answer["files"]] + [f"{answer['response_id']}/manifest.json"]
    )
    app.verify_answer(answer)


async def test_a_file_over_the_size_limit_is_never_downloaded_nor_written(app: AppClient, configure, rig) -> None:
    configure(MAX_FILE_BYTES=3 * 1024 * 1024)
    info = app.script(
        files=[
            {"path": "/mnt/data/huge.bin", "size": 3 * 1024 * 1024 + 1},
            {"path": "/mnt/data/exact.bin", "size": 3 * 1024 * 1024},
        ]
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert [f["filename"] for f in answer["files"]] == ["exact.bin"]
    [failed] = answer["failed_files"]
    assert failed["filename"] == "huge.bin" and failed["code"] == "file_too_large"
    huge_id = failed["file_id"]
    assert rig.emulator.stats()["downloads"].get(huge_id, 0) == 0
    assert not any(n.split("/")[1] == huge_id for n in storage_names(rig, answer["response_id"]))
    app.verify_answer(answer)


async def test_a_stream_longer_than_announced_or_the_limit_leaves_no_blob(app: AppClient, rig) -> None:
    """The size in the listing is only a claim: the byte count of the stream itself is enforced."""
    from azure.core.exceptions import ResourceNotFoundError

    from code_interpreter_files.errors import FileCopyError
    from code_interpreter_files.services import get_services

    store = (await get_services()).store
    await store.ensure_container()

    async def stream(total: int, chunk: int = 1 << 20):
        sent = 0
        while sent < total:
            size = min(chunk, total - sent)
            sent += size
            yield b"z" * size

    for name, total, limit, announced, code in (
        ("resp_limits/f1/too-big.bin", 5 * (1 << 20) + 1, 5 * (1 << 20), None, "file_too_large"),
        ("resp_limits/f2/longer.bin", 2000, 10_000, 1000, "download_interrupted"),
        ("resp_limits/f3/shorter.bin", 999, 10_000, 1000, "download_interrupted"),
    ):
        with pytest.raises(FileCopyError) as raised:
            await blob_upload.upload_stream(
                store.file_client(name),
                stream(total),
                max_bytes=limit,
                expected_bytes=announced,
                filename=name.rsplit("/", 1)[1],
                content_type="application/octet-stream",
                metadata={},
                budget=(await get_services()).memory_budget,
            )
        assert raised.value.code == code
        with pytest.raises(ResourceNotFoundError):
            await store._container.get_blob_client(name).get_blob_properties()
        figures.count("inputs_listed")


async def test_broken_unicode_from_the_model_still_gives_a_json_answer_and_a_manifest(app: AppClient, rig) -> None:
    """Text and container paths with lone surrogates and control characters (valid JSON escapes)."""
    figures.count("inputs_listed", 3)
    info = app.script(
        text="Broken \ud800 text \x00\x1b[31m with [a link](sandbox:/mnt/data/r\udfffport.csv) "
        "and sandbox:/mnt/data/two words\ud800.txt too.",
        files=[
            {"path": "/mnt/data/r\udfffport.csv", "content": "a,b", "cite": False},
            {"path": "/mnt/data/two words\ud800.txt", "content": "c", "cite": False},
        ],
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert [f["filename"] for f in answer["files"]] == ["rport.csv", "two words.txt"]
    assert "\ufffd" in answer["text"]
    assert all(f["url"] in answer["text"] for f in answer["files"])  # the links were still replaced
    app.verify_answer(answer)
    again = await app.get_run(answer["response_id"])  # from the manifest
    assert again.status == 200, again.body
    text = answer["text"]
    for old, new in zip(answer["files"], again.json["files"], strict=True):
        text = text.replace(old["url"], new["url"])
    assert again.json["text"] == text


async def test_pathological_answer_text_is_linked_in_linear_time(app: AppClient) -> None:
    """A model can be talked into writing anything: a link followed by 300,000 dots must not stall
    the worker (every request of the worker waits while link_files runs)."""
    figures.count("inputs_listed", 2)
    dots = "." * 300_000
    info = app.script(
        text=f"See sandbox:/mnt/data/a.txt{dots} and sandbox:/mnt/data/a.txt. " + "sandbox:/mnt/data/x, " * 5000,
        files=[{"path": "/mnt/data/a.txt", "content": "a"}],
    )
    started = time.perf_counter()
    reply = await app.post_run(prompt=info["prompt"])
    elapsed = time.perf_counter() - started
    assert reply.status == 200, reply.body
    url = reply.json["files"][0]["url"]
    assert f"and {url}. " in reply.json["text"]
    assert elapsed < 3, f"{elapsed:.1f} s"


async def test_concurrent_hostile_bodies_never_disturb_a_valid_run(app: AppClient) -> None:
    """Garbage and valid runs at the same time on one worker: each gets its own right answer."""
    info = app.script(files=[{"path": "/mnt/data/fine.txt", "content": "fine"}])
    garbage = [b"{" * 50_000, b"\xff" * 1000, b'{"prompt": "\\ud800"}', b"x" * (LIMIT + 1), b"[]"] * 4
    figures.count("inputs_listed", len(garbage))
    replies = await asyncio.gather(app.post_run(prompt=info["prompt"]), *(app.post_run(raw=body) for body in garbage))
    assert replies[0].status == 200 and [f["filename"] for f in replies[0].json["files"]] == ["fine.txt"]
    for reply in replies[1:]:
        check_error_body(reply.body, reply.status)
    app.verify_answer(replies[0].json)
