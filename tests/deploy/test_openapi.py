"""openapi.yaml documents every route of function_app.py, and the contract helper (tests/openapi_contract.py)
accepts valid answers and refuses broken ones."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests import openapi_contract
from tests.deploy.deploy_script import ROOT

assert_matches_openapi = openapi_contract.assert_matches_openapi


def routes_in_function_app() -> set[tuple[str, str]]:
    text = (ROOT / "function_app.py").read_text()
    prefix = json.loads((ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    routes = set()
    for route, methods in re.findall(r"@app\.route\(route=\"([^\"]+)\", methods=\[([^\]]+)\]", text):
        for method in re.findall(r"\"(\w+)\"", methods):
            routes.add((method.lower(), f"/{prefix}/{route}"))
    return routes


def test_openapi_documents_every_route():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops if m in {"get", "post", "delete", "put"}}
    routes = routes_in_function_app()
    assert routes, "no routes found in function_app.py"
    assert routes == documented
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            anonymous = op.get("security") == []
            # Anonymous: the health probe, and the Azure OpenAI webhook (every request signature-checked).
            assert anonymous == (path in ("/api/health", "/api/openai-webhook")), f"{method} {path}: function key auth"


RUN = {
    "response_id": "resp_abc",
    "status": "completed",
    "text": "Here is your chart.",
    "files": [
        {
            "filename": "chart.png",
            "file_id": "cfile_1",
            "container_id": "cntr_1",
            "blob": "resp_abc/chart.png",
            "url": "https://st.blob.core.windows.net/code-interpreter-outputs/resp_abc/chart.png?sv=1&sig=x",
            "bytes": 1234,
            "content_type": "image/png",
            "sha256": "0" * 64,
            "expires_at": "2030-01-01T00:00:00Z",
            "cited": True,
            "origin": "cited",
        }
    ],
    "failed_files": [{"filename": "big.csv", "file_id": "cfile_2", "code": "file_too_large", "message": "too big"}],
    "incomplete_reason": None,
    "warnings": [],
    "inputs": [{"name": "data.csv", "bytes": 12, "sha256": "1" * 64}],
    "continued_in": None,
}
JSON = {"Content-Type": "application/json"}
ACCEPTED_HEADERS = {**JSON, "Location": "/api/runs/resp_abc", "Retry-After": "5"}


def error(code: str, **extra) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", **extra}}).encode()


def with_file(**changes) -> bytes:
    return json.dumps({**RUN, "files": [{**RUN["files"][0], **changes}]}).encode()


VALID_ANSWERS = [
    ("POST", "/api/runs", 200, json.dumps(RUN).encode(), JSON, b'{"prompt": "plot"}', None),
    (
        "POST",
        "/api/runs",
        200,
        json.dumps(RUN).encode(),
        {"content-type": "application/json; charset=utf-8"},
        None,
        None,
    ),
    ("POST", "/api/runs", 202, b'{"response_id": "resp_abc", "status": "queued"}', ACCEPTED_HEADERS, None, None),
    ("POST", "/api/runs", 400, error("invalid_json", invocation_id="inv-1"), JSON, b"{oops", None),
    ("POST", "/api/runs", 413, error("payload_too_large"), JSON, None, None),
    ("POST", "/api/runs", 410, error("container_expired"), JSON, None, None),
    ("POST", "/api/runs", 502, error("upstream_error", upstream_status=429), JSON, None, None),
    ("POST", "/api/runs", 503, error("not_configured"), JSON, None, None),
    ("POST", "/api/runs", 504, error("timeout"), JSON, None, None),
    (
        "GET",
        "/api/runs/resp_abc",
        200,
        json.dumps({**RUN, "files": [], "failed_files": []}).encode(),
        JSON,
        None,
        {"sas_ttl_minutes": "30"},
    ),
    (
        "GET",
        "/api/runs/resp_abc",
        202,
        b'{"response_id": "resp_abc", "status": "in_progress"}',
        {**JSON, "Retry-After": "5"},
        None,
        None,
    ),
    ("GET", "/api/runs/bad id", 400, error("invalid_run_id"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 404, error("run_not_found"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 409, error("run_cancelled"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 502, error("run_failed"), JSON, None, None),
    ("DELETE", "/api/runs/resp_abc", 204, b"", {}, None, None),
    ("DELETE", "/api/runs/resp_abc", 404, error("run_not_found"), JSON, None, None),
    (
        "GET",
        "/api/health",
        200,
        b'{"status": "ok", "configured": true, "missing": [], "invalid": []}',
        JSON,
        None,
        None,
    ),
    (
        "GET",
        "/api/health",
        200,
        b'{"status": "ok", "configured": true, "missing": [], "invalid": [], "offline_stand_in": true,'
        b' "notice": "the model is an offline stand-in"}',
        JSON,
        None,
        None,
    ),
    (
        "GET",
        "/api/health",
        503,
        b'{"status": "not_configured", "configured": false, "missing": ["AZURE_OPENAI_ENDPOINT"], "invalid": []}',
        JSON,
        None,
        None,
    ),
]

BROKEN_ANSWERS = {
    "unknown status": ("POST", "/api/runs", 418, error("internal_error"), JSON),
    "unknown path": ("GET", "/api/nope", 200, b"{}", JSON),
    "unknown method": ("PUT", "/api/runs/resp_abc", 200, json.dumps(RUN).encode(), JSON),
    "202 without Location": (
        "POST",
        "/api/runs",
        202,
        b'{"response_id": "r", "status": "queued"}',
        {**JSON, "Retry-After": "5"},
    ),
    "202 without Retry-After": ("GET", "/api/runs/r", 202, b'{"response_id": "r", "status": "queued"}', JSON),
    "Retry-After not a number": (
        "POST",
        "/api/runs",
        202,
        b'{"response_id": "r", "status": "queued"}',
        {**ACCEPTED_HEADERS, "Retry-After": "soon"},
    ),
    "202 unknown status": ("POST", "/api/runs", 202, b'{"response_id": "r", "status": "done"}', ACCEPTED_HEADERS),
    "missing files": (
        "POST",
        "/api/runs",
        200,
        json.dumps({k: v for k, v in RUN.items() if k != "files"}).encode(),
        JSON,
    ),
    "extra field": ("POST", "/api/runs", 200, json.dumps({**RUN, "debug": 1}).encode(), JSON),
    "bad sha256": ("POST", "/api/runs", 200, with_file(sha256="XYZ"), JSON),
    "bytes as string": ("POST", "/api/runs", 200, with_file(bytes="12"), JSON),
    "bad expires_at": ("POST", "/api/runs", 200, with_file(expires_at="tomorrow"), JSON),
    "cited missing": (
        "POST",
        "/api/runs",
        200,
        json.dumps({**RUN, "files": [{k: v for k, v in RUN["files"][0].items() if k != "cited"}]}).encode(),
        JSON,
    ),
    "failed file without code": (
        "POST",
        "/api/runs",
        200,
        json.dumps({**RUN, "failed_files": [{"filename": "a", "file_id": "b", "message": "m"}]}).encode(),
        JSON,
    ),
    "unknown error code": ("GET", "/api/runs/r", 404, error("nope"), JSON),
    "error without message": ("GET", "/api/runs/r", 404, b'{"error": {"code": "run_not_found"}}', JSON),
    "flat error": ("GET", "/api/runs/r", 404, b'{"code": "run_not_found", "message": "m"}', JSON),
    "not JSON": ("GET", "/api/runs/r", 404, b"Not Found", JSON),
    "text/plain error": ("GET", "/api/runs/r", 404, error("run_not_found"), {"Content-Type": "text/plain"}),
    "204 with body": ("DELETE", "/api/runs/r", 204, b'{"deleted": true}', {}),
    "health ok with missing": (
        "GET",
        "/api/health",
        200,
        b'{"status": "ok", "configured": true, "missing": ["X"], "invalid": []}',
        JSON,
    ),
    "health 503 says ok": (
        "GET",
        "/api/health",
        503,
        b'{"status": "ok", "configured": false, "missing": [], "invalid": []}',
        JSON,
    ),
    "health leaks a value": (
        "GET",
        "/api/health",
        503,
        b'{"status": "not_configured", "configured": false, "missing": [], "invalid": [],'
        b' "values": {"AZURE_OPENAI_API_KEY": "k"}}',
        JSON,
    ),
}


@pytest.mark.parametrize("answer", VALID_ANSWERS, ids=lambda a: f"{a[0]} {a[1]} {a[2]}")
def test_contract_accepts_valid_answers(answer):
    method, path, status, body, headers, request_body, query = answer
    assert_matches_openapi(method, path, status, body, headers=headers, request_body=request_body, query=query)


@pytest.mark.parametrize("name", sorted(BROKEN_ANSWERS))
def test_contract_rejects_broken_answers(name):
    method, path, status, body, headers = BROKEN_ANSWERS[name]
    with pytest.raises(AssertionError) as raised:
        assert_matches_openapi(method, path, status, body, headers=headers)
    message = str(raised.value)
    assert message.startswith(f"{method} {path} -> {status}")
    assert len(message) < 8000


def test_contract_message_points_at_the_field():
    with pytest.raises(AssertionError, match=r"at files/0/sha256: 'XYZ' does not match"):
        assert_matches_openapi("POST", "/api/runs", 200, with_file(sha256="XYZ"), headers=JSON)


def test_contract_spec_is_parsed_once():
    assert openapi_contract._openapi() is openapi_contract._openapi()
