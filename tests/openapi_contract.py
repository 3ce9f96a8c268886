"""Check an HTTP answer of the app against ``openapi.yaml``.

Usage from any test::

    from tests.openapi_contract import assert_matches_openapi   # or: from openapi_contract import ...
    assert_matches_openapi("POST", "/api/runs", resp.status_code, resp.get_body(),
                           headers=dict(resp.headers), request_body=req_body)

Only the RESPONSE is validated (status, headers, body). The request data is used to
find the operation, so tests that send deliberately broken requests still work.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
HOST_URL = "https://localhost:7071"

__all__ = ["assert_matches_openapi", "SPEC_PATH"]


@functools.lru_cache(maxsize=1)
def _openapi() -> OpenAPI:
    with SPEC_PATH.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    return OpenAPI.from_dict(spec)  # validates the spec itself once


def _errors(exc: BaseException) -> list[str]:
    """Flatten openapi-core's nested exceptions into readable lines."""
    lines: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        lines.append(f"{type(e).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}")
        for schema_error in getattr(e, "schema_errors", None) or []:
            where = "/".join(str(p) for p in getattr(schema_error, "absolute_path", [])) or "<root>"
            lines.append(f"  at {where}: {getattr(schema_error, 'message', schema_error)}")
        if e.__cause__ is not None:
            todo.append(e.__cause__)
    return lines


def assert_matches_openapi(
    method: str,
    path: str,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    request_body: bytes | None = None,
    query: dict | None = None,
) -> None:
    """Raise AssertionError unless the answer matches ``openapi.yaml``.

    ``path`` is the real path (e.g. ``/api/runs/resp_abc``), ``headers`` the
    RESPONSE headers (any case), ``request_body``/``query`` the request sent.
    """
    headers = {str(k): str(v) for k, v in (headers or {}).items()}
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
    body = body or b""
    if isinstance(body, str):  # be lenient with callers
        body = body.encode("utf-8")

    request = MockRequest(
        HOST_URL,
        method.lower(),
        path,
        args={k: str(v) for k, v in (query or {}).items()},
        data=request_body or b"",
        content_type="application/json",
    )
    response = MockResponse(body, status_code=status, headers=headers, content_type=content_type)

    where = f"{method.upper()} {path} -> {status}"
    if status == 204 and body:
        raise AssertionError(f"{where}: 204 must have no body, got {body[:200]!r}")
    try:
        _openapi().validate_response(request, response)
    except Exception as exc:  # openapi-core raises several unrelated classes
        try:
            shown: Any = json.loads(body) if body else ""
            shown = json.dumps(shown, indent=2)[:2000]
        except ValueError:
            shown = repr(body[:500])
        details = "\n".join(_errors(exc))
        raise AssertionError(
            f"{where} does not match openapi.yaml:\n{details}\nresponse headers: {headers}\nresponse body: {shown}"
        ) from None
