"""What the Functions host reads before it listens to a queue: host.json's `extensions.queues`, the app's
queue-triggered functions (their queue names resolved from the app settings as binding expressions are),
and what it hands a function and records of each message (`Invocation`). Used by `queue_host.QueueHost`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import azure.functions as func

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_JSON = REPO_ROOT / "host.json"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
# The host leases a message for 10 minutes and renews it while the function runs.
DEFAULT_LEASE_SECONDS = 600
_SETTING_REFERENCE = re.compile(r"%([^%]+)%")

Outcome = Literal["succeeded", "failed", "poisoned", "undecodable", "expired_lease"]


@dataclass(frozen=True)
class QueueSettings:
    """host.json `extensions.queues` (the parts that change what a test sees), with the host's defaults."""

    max_dequeue_count: int = 5
    visibility_timeout_seconds: float = 0.0
    batch_size: int = 16
    message_encoding: Literal["base64", "none"] = "base64"
    new_batch_threshold: int = 8  # the host's default: batchSize / 2 (per core; one here)
    max_polling_interval_seconds: float = 60.0

    @classmethod
    def from_host_json(cls, path: Path = HOST_JSON) -> QueueSettings:
        queues = json.loads(Path(path).read_text()).get("extensions", {}).get("queues", {})
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"host.json messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            visibility_timeout_seconds=parse_timespan(str(queues.get("visibilityTimeout", "00:00:00"))),
            batch_size=int(queues.get("batchSize", 16)),
            message_encoding="base64" if encoding == "base64" else "none",
            new_batch_threshold=int(queues.get("newBatchThreshold", int(queues.get("batchSize", 16)) // 2)),
            max_polling_interval_seconds=parse_timespan(str(queues.get("maxPollingInterval", "00:01:00"))),
        )


def parse_timespan(value: str) -> float:
    """Seconds in a .NET TimeSpan string: `hh:mm:ss`, `hh:mm:ss.fff` or `d.hh:mm:ss`."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", value.strip())
    if match is None:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueFunction:
    """A queue-triggered function of the app, with its queue name resolved from the settings."""

    name: str
    queue_name: str
    connection: str
    arg_name: str
    user_function: Callable[..., Any]
    wants_context: bool


@dataclass(frozen=True)
class Invocation:
    """One message handled: which function, which attempt (dequeue count), what happened."""

    function: str
    queue: str
    message_id: str
    dequeue_count: int
    outcome: Outcome
    error: str | None = None


@dataclass
class WorkerContext(func.Context):
    """The `context` argument the Python worker passes."""

    _function_name: str
    _invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local  # type: ignore[return-value]

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(REPO_ROOT)

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def resolve_setting_references(value: str, environ: Mapping[str, str]) -> str:
    """`%RUNS_QUEUE%-poison` -> `runs-poison`, as the host resolves binding expressions from app settings."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise KeyError(f"the binding refers to app setting {name!r}, which is not set")
        return environ[name]

    return _SETTING_REFERENCE.sub(lookup, value)


def queue_functions(functions: Iterable[func.Function], environ: Mapping[str, str]) -> list[QueueFunction]:
    """The functions with a `queueTrigger` binding, queue names resolved.

    Pass the list of the app's one `get_functions()` call (the SDK refuses to index an app twice).
    """
    found = []
    for function in functions:
        trigger = function.get_trigger()
        binding = trigger.get_dict_repr() if trigger is not None else {}
        if binding.get("type") != "queueTrigger":
            continue
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        arg_name = str(binding["name"])
        extra = set(parameters) - {arg_name, "context"}
        if extra:
            raise NotImplementedError(f"{function.get_function_name()}: bindings other than the trigger: {extra}")
        found.append(
            QueueFunction(
                name=str(function.get_function_name()),
                queue_name=resolve_setting_references(str(binding["queueName"]), environ),
                connection=str(binding.get("connection") or DEFAULT_CONNECTION),
                arg_name=arg_name,
                user_function=user_function,
                wants_context="context" in parameters,
            )
        )
    return found


def load_app(spec: str) -> func.FunctionApp:
    """`module:attribute`, e.g. `function_app:app`."""
    module_name, _, attribute = spec.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{spec} is not a FunctionApp")
    return app
