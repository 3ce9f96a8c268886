"""HTTP in and out: parse requests, call the pipeline, turn every outcome into a JSON answer."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
import openai
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from pydantic import ValidationError

from . import catalog, errors, model_info, ownership, pipeline, responses_api, webhooks
from .errors import (
    InternalError,
    InvalidRequest,
    RateLimited,
    ServiceError,
    TimedOut,
    TooLarge,
    Unavailable,
    UpstreamFailed,
)
from .identity import IdentityError
from .invocation import invoke
from .models import INVALID_INPUT_NAME, RunRequest
from .naming import is_valid_response_id, valid_unicode
from .records import UnsupportedManifest
from .runlog import RunLog, logger
from .services import get_services
from .settings import SettingsError, load_settings

MAX_BODY_BYTES = 1024 * 1024

# Each outcome's HTTP status, in one place (the most specific class wins).
STATUS: dict[type[ServiceError], int] = {
    errors.InvalidRequest: 400,
    errors.InvalidSignature: 401,
    errors.NotConfiguredHere: 404,
    errors.RunNotFound: 404,
    errors.RunDeleted: 409,
    errors.RunCancelled: 409,
    errors.RunInProgress: 409,
    errors.InputChanged: 409,
    errors.ContainerGone: 410,
    errors.TooLarge: 413,
    errors.RateLimited: 429,
    errors.InternalError: 500,
    errors.RunFailed: 502,
    errors.FinishFailed: 502,
    errors.UpstreamFailed: 502,
    errors.Unavailable: 503,
    errors.TimedOut: 504,
}


def status_of(error: ServiceError) -> int:
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def error_codes() -> dict[str, int]:
    """Every error code the API answers with, and its status (for the contract tests and the client)."""
    return {code: status for kind, status in STATUS.items() for code in kind.codes}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    # Text from the model (or an upstream error) can hold lone surrogates, which UTF-8 cannot encode.
    return func.HttpResponse(
        body=valid_unicode(json.dumps(body, ensure_ascii=False)),
        status_code=status,
        mimetype="application/json",
        charset="utf-8",
        headers=headers,
    )


def parse_run_request(body: bytes) -> RunRequest:
    """The POST body, strictly: a JSON object with known fields of the right types."""
    if len(body) > MAX_BODY_BYTES:
        raise TooLarge(f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest('the body must be a JSON object, e.g. {"prompt": "..."}', code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest('the body must be a JSON object, e.g. {"prompt": "..."}')
    try:
        return RunRequest.model_validate(data)
    except ValidationError as error:
        details = error.errors(include_url=False)
        for e in details:  # a name that could leave INPUT_CONTAINER is named as such, before anything else
            if e["type"] == INVALID_INPUT_NAME:
                raise InvalidRequest(_input_name_message(e["loc"], e["msg"]), code="invalid_input_name") from None
        problems = [f"{_field(e['loc'])}: {e['msg']}" for e in details]
        raise InvalidRequest("; ".join(problems[:10])) from None


def _input_name_message(loc: tuple[int | str, ...], problem: str) -> str:
    """`input_files[2].blob has a '..' segment: ...`; loc is (input_files, index, tag, field)."""
    item = f"input_files[{loc[1]}].{loc[-1]}" if len(loc) >= 3 else _field(loc)
    rule = (
        "a blob is named by a plain relative path inside INPUT_CONTAINER (e.g. team/2026/q3.csv)"
        if loc[-1] == "blob"
        else "a file name is a plain relative path (e.g. q3.csv), its last segment the name"
    )
    return f"{item} {problem}: {rule}, taken literally"


def _field(loc: tuple[int | str, ...]) -> str:
    """The field an error is about, as the caller wrote it (unknown names too), but never echoing
    more than a few dozen characters of their input back into answers and logs."""
    name = ".".join(map(str, loc)) or "body"
    return valid_unicode(name if len(name) <= 60 else name[:60] + "...")


def parse_ttl_query(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        raise InvalidRequest("sas_ttl_minutes must be a whole number of minutes")
    return int(value)


def response_id_from(req: func.HttpRequest) -> str:
    response_id = req.route_params.get("response_id", "")
    if not is_valid_response_id(response_id):
        raise InvalidRequest(
            "a run id is the response id: resp_ followed by letters, digits, '_' or '-'", code="invalid_run_id"
        )
    return response_id


def _outcome(result: dict[str, Any] | pipeline.Accepted) -> func.HttpResponse:
    if isinstance(result, pipeline.Accepted):
        return json_response(
            202,
            {"response_id": result.response_id, "status": result.status},
            {"Location": f"/api/runs/{result.response_id}", "Retry-After": str(pipeline.RETRY_AFTER_SECONDS)},
        )
    return json_response(200, result)


def _error_for(error: Exception) -> ServiceError:
    """What went wrong, as an outcome the caller can act on. Messages never carry secrets."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, SettingsError):
        return Unavailable(f"{error}; see the README's settings table")
    if isinstance(error, IdentityError):
        return Unavailable(str(error), code="identity_error")
    if isinstance(error, UnsupportedManifest):
        return InternalError(str(error), code="unsupported_manifest")
    if isinstance(error, openai.RateLimitError):
        asked = responses_api.retry_after_seconds(error.response.headers, str(error.message))
        seconds = max(1, math.ceil(asked if asked is not None else responses_api.DEFAULT_RETRY_AFTER_SECONDS))
        return RateLimited(
            f"Azure OpenAI is rate limiting this deployment; retry after {seconds} seconds",
            headers={"Retry-After": str(seconds)},
            upstream_status=429,
        )
    if isinstance(error, openai.APITimeoutError):
        return TimedOut("Azure OpenAI did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return UpstreamFailed("could not reach Azure OpenAI: check AZURE_OPENAI_ENDPOINT")
    if isinstance(error, openai.APIStatusError):
        hint = {
            401: "the credentials were refused: check the API key, or the identity's token and its audience "
            "(AZURE_OPENAI_TOKEN_SCOPE: https://ai.azure.com/.default or https://cognitiveservices.azure.com/.default)",
            403: "the identity lacks the Cognitive Services OpenAI User role on the Azure OpenAI resource",
            404: "check AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT",
        }.get(error.status_code, "try again later")
        return UpstreamFailed(f"Azure OpenAI answered {error.status_code}: {hint}", upstream_status=error.status_code)
    if isinstance(error, ClientAuthenticationError) or (
        isinstance(error, HttpResponseError) and error.status_code in (401, 403)
    ):
        return UpstreamFailed(
            "Storage refused the app's credentials: the identity needs Storage Blob Data Contributor on the "
            "containers and Storage Table Data Contributor on the runs table (or check "
            "OUTPUT_STORAGE_CONNECTION_STRING)",
            code="storage_auth_error",
        )
    if isinstance(error, (HttpResponseError, ServiceRequestError)):
        return UpstreamFailed(f"Storage failed ({type(error).__name__}); try again", code="storage_error")
    if isinstance(error, TimeoutError):
        return TimedOut("the run took longer than its time budget")
    return InternalError("unexpected error; the logs have the details under this invocation id")


async def handle(
    req: func.HttpRequest,
    context: func.Context,
    operation: str,
    work: Callable[[func.HttpRequest, RunLog], Awaitable[func.HttpResponse]],
) -> func.HttpResponse:
    """Run one request; whatever happens, answer `{"error": {"code", "message"}}`, never a trace."""

    def answer_error(raw: Exception, log: RunLog) -> func.HttpResponse:  # every failure becomes a JSON answer
        error = _error_for(raw)
        status = status_of(error)
        if isinstance(error, InternalError) and error.code == "internal_error":
            logger.error("%s failed | invocation_id=%s", operation, context.invocation_id, exc_info=raw)
        log.warning("answered with an error", status=status, code=error.code, detail=error.message)
        return json_response(status, error.body(invocation_id=context.invocation_id), error.headers)

    return await invoke(context, operation, lambda log: work(req, log), answer_error)


async def create_run(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    request = parse_run_request(req.get_body())
    services = await get_services()
    principal = ownership.caller_principal(req.headers, services.settings)
    return _outcome(await pipeline.create_run(services, request, log, principal))


async def list_runs(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    services = await get_services()
    principal = ownership.caller_principal(req.headers, services.settings)
    page = await catalog.list_runs(
        services,
        principal,
        limit=catalog.parse_limit(req.params.get("limit")),
        cursor=req.params.get("cursor"),
        status=catalog.parse_status(req.params.get("status")),
    )
    return json_response(200, page)


async def get_run(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    services = await get_services()
    response_id = response_id_from(req)
    ttl = parse_ttl_query(req.params.get("sas_ttl_minutes"))
    principal = ownership.caller_principal(req.headers, services.settings)
    return _outcome(await pipeline.get_run(services, response_id, ttl, log, principal))


async def delete_run(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    services = await get_services()
    principal = ownership.caller_principal(req.headers, services.settings)
    await pipeline.delete_run(services, response_id_from(req), log, principal)
    return func.HttpResponse(status_code=204)


async def openai_webhook(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    """Verify an Azure OpenAI webhook and queue the finish of its run (once per webhook id)."""
    services = await get_services()
    if services.settings.webhook_secret is None:
        raise errors.NotConfiguredHere("AZURE_OPENAI_WEBHOOK_SECRET is not set")

    async def act(event: webhooks.WebhookEvent) -> None:
        assert event.response_id is not None
        log.response_id = event.response_id
        await services.queue.enqueue_finish(event.response_id)

    outcome = await webhooks.handle_webhook(
        req.get_body(),
        dict(req.headers),
        settings=services.settings,
        openai=services.openai,
        markers=services.store,
        act=act,
    )
    return json_response(200, {"status": outcome.action})


async def health() -> func.HttpResponse:
    """Whether the app is configured: the names of missing or invalid settings, never values; and
    whether the model is the offline stand-in (model_info.py: only a local endpoint is asked)."""
    try:
        load_settings()
    except SettingsError as error:
        return json_response(
            503,
            {
                "status": "not_configured",
                "configured": False,
                "missing": error.missing,
                "invalid": sorted(error.invalid),
            },
        )
    try:
        stand_in = await model_info.is_offline_stand_in(await get_services())
    except Exception:  # the probe answers whatever happens; nothing here is worth a 500
        stand_in = False
    body: dict[str, Any] = {"status": "ok", "configured": True, "missing": [], "invalid": []}
    body["offline_stand_in"] = stand_in
    if stand_in:
        body["notice"] = model_info.NOTICE
    return json_response(200, body)
