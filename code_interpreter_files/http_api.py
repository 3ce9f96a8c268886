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

from . import model_info, ownership, pipeline, queue_finish, responses_api, webhooks
from .errors import ApiError
from .identity import IdentityError
from .models import RunRequest, UnsupportedManifest
from .naming import is_valid_response_id, valid_unicode
from .runlog import RunLog, logger
from .services import get_services
from .settings import SettingsError, load_settings

MAX_BODY_BYTES = 1024 * 1024


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
        raise ApiError(413, "payload_too_large", f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", 'the body must be a JSON object, e.g. {"prompt": "..."}') from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", 'the body must be a JSON object, e.g. {"prompt": "..."}')
    try:
        return RunRequest.model_validate(data)
    except ValidationError as error:
        problems = [f"{_field(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)]
        raise ApiError(400, "invalid_request", "; ".join(problems[:10])) from None


def _field(loc: tuple[int | str, ...]) -> str:
    """The field an error is about, as the caller wrote it (unknown names too), but never echoing
    more than a few dozen characters of their input back into answers and logs."""
    name = ".".join(map(str, loc)) or "body"
    return valid_unicode(name if len(name) <= 60 else name[:60] + "...")


def parse_ttl_query(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        raise ApiError(400, "invalid_request", "sas_ttl_minutes must be a whole number of minutes")
    return int(value)


def response_id_from(req: func.HttpRequest) -> str:
    response_id = req.route_params.get("response_id", "")
    if not is_valid_response_id(response_id):
        raise ApiError(
            400, "invalid_run_id", "a run id is the response id: resp_ followed by letters, digits, '_' or '-'"
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


def _error_for(error: Exception) -> ApiError:
    """Map what went wrong to what the caller can do about it. Messages never carry secrets."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, SettingsError):
        return ApiError(503, "not_configured", f"{error}; see the README's settings table")
    if isinstance(error, IdentityError):
        return ApiError(503, "identity_error", str(error))
    if isinstance(error, UnsupportedManifest):
        return ApiError(500, "unsupported_manifest", str(error))
    if isinstance(error, openai.RateLimitError):
        asked = responses_api.retry_after_seconds(error.response.headers, str(error.message))
        seconds = max(1, math.ceil(asked if asked is not None else responses_api.DEFAULT_RETRY_AFTER_SECONDS))
        return ApiError(
            429,
            "rate_limited",
            f"Azure OpenAI is rate limiting this deployment; retry after {seconds} seconds",
            headers={"Retry-After": str(seconds)},
            upstream_status=429,
        )
    if isinstance(error, openai.APITimeoutError):
        return ApiError(504, "timeout", "Azure OpenAI did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return ApiError(502, "upstream_error", "could not reach Azure OpenAI: check AZURE_OPENAI_ENDPOINT")
    if isinstance(error, openai.APIStatusError):
        hint = {
            401: "the credentials were refused: check the API key, or the identity's token and its audience "
            "(AZURE_OPENAI_TOKEN_SCOPE: https://ai.azure.com/.default or https://cognitiveservices.azure.com/.default)",
            403: "the identity lacks the Cognitive Services OpenAI User role on the Azure OpenAI resource",
            404: "check AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT",
        }.get(error.status_code, "try again later")
        return ApiError(
            502,
            "upstream_error",
            f"Azure OpenAI answered {error.status_code}: {hint}",
            upstream_status=error.status_code,
        )
    if isinstance(error, ClientAuthenticationError) or (
        isinstance(error, HttpResponseError) and error.status_code in (401, 403)
    ):
        return ApiError(
            502,
            "storage_auth_error",
            "Blob Storage refused the app's credentials: the identity needs Storage Blob Data Contributor "
            "on the account (or check OUTPUT_STORAGE_CONNECTION_STRING)",
        )
    if isinstance(error, (HttpResponseError, ServiceRequestError)):
        return ApiError(502, "storage_error", f"Blob Storage failed ({type(error).__name__}); try again")
    if isinstance(error, TimeoutError):
        return ApiError(504, "timeout", "the run took longer than its time budget")
    return ApiError(500, "internal_error", "unexpected error; the logs have the details under this invocation id")


async def handle(
    req: func.HttpRequest,
    context: func.Context,
    operation: str,
    work: Callable[[func.HttpRequest, RunLog], Awaitable[func.HttpResponse]],
) -> func.HttpResponse:
    """Run one request; whatever happens, answer `{"error": {"code", "message"}}`, never a trace."""
    log = RunLog(context.invocation_id, operation)
    with log.invocation(getattr(context, "trace_context", None)):  # the invocation's root span
        try:
            return await work(req, log)
        except Exception as raw:  # the last line of defence: every failure becomes a JSON answer
            error = _error_for(raw)
            if error.code == "internal_error":
                logger.exception("%s failed | invocation_id=%s", operation, context.invocation_id)
            log.warning("answered with an error", status=error.status, code=error.code, detail=error.message)
            return json_response(error.status, error.body(invocation_id=context.invocation_id), error.headers)


async def create_run(req: func.HttpRequest, log: RunLog) -> func.HttpResponse:
    request = parse_run_request(req.get_body())
    services = await get_services()
    principal = ownership.caller_principal(req.headers, services.settings)
    return _outcome(await pipeline.create_run(services, request, log, principal))


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
        raise ApiError(404, "webhook_not_configured", "AZURE_OPENAI_WEBHOOK_SECRET is not set")

    async def act(event: webhooks.WebhookEvent) -> None:
        assert event.response_id is not None
        log.response_id = event.response_id
        await services.queue.enqueue_finish(event.response_id, "cited", None)  # collect: from the run's metadata

    outcome = await webhooks.handle_webhook(
        req.get_body(),
        dict(req.headers),
        settings=services.settings,
        openai=services.openai,
        markers=services.store,
        act=act,
    )
    return json_response(200, {"status": outcome.action})


async def on_queue_message(msg: func.QueueMessage, context: func.Context, operation: str) -> None:
    """A RUNS_QUEUE (or poison) message. Errors are logged and re-raised: the host retries them."""
    log = RunLog(context.invocation_id, operation)
    with log.invocation(getattr(context, "trace_context", None)):
        log.info("queue message", dequeue_count=msg.dequeue_count, message_id=msg.id)
        try:
            services = await get_services()
            body = msg.get_body().decode("utf-8")
            if operation == "record_poison":
                await queue_finish.record_poison(services, body, log)
            else:
                await queue_finish.handle_message(services, body, log)
        except Exception as error:
            log.warning(
                "queue message failed; the host retries it", error=type(error).__name__, detail=str(error)[:200]
            )
            raise


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
