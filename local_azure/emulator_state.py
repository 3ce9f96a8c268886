"""The emulator's in-memory state (scripts, runs, containers), its counters, and the scripted faults
its endpoints consume. The handler classes (emulator_responses, emulator_containers, emulator_ctl)
build on it; ``emulator.Emulator`` puts them together."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from . import emulator_files, emulator_inputs
from .emulator_errors import fault_error
from .emulator_model import Container, Run, Script
from .openai_schemas import SchemaChecker

REQUEST_KEYS = (
    "POST /responses",
    "GET /responses/{id}",
    "POST /responses/{id}/cancel",
    "DELETE /responses/{id}",
    "GET /containers/{cid}/files",
    "GET /containers/{cid}/files/{fid}",
    "GET /containers/{cid}/files/{fid}/content",
    "GET /models/{model}",
)


class EmulatorState:
    """In-memory state and counters."""

    def __init__(
        self, api_key: str, latency: float = 0.0, chunk_size: int = 1 << 20, schema_check: bool = True
    ) -> None:
        self.api_key = api_key
        self.started = int(time.time())
        self.latency = latency
        self.chunk_size = chunk_size
        self.scripts: dict[str, Script] = {}
        self.runs: dict[str, Run] = {}
        self.containers: dict[str, Container] = {}
        self.files_api = emulator_files.FilesApi(self)  # Files, Uploads, GET /containers/{id}
        self.inputs = emulator_inputs.RunInputs(self, self.files_api)  # a run's input files and container
        # Not reset by reset_stats: the session check adds up every body this process served.
        self.schemas = SchemaChecker(enabled=schema_check)
        self.streams_open = 0  # a gauge: event streams whose handler still runs
        self.closing = False  # set on shutdown: silent streams end instead of holding it up
        self.reset_stats()

    # ---- stats

    def reset_stats(self) -> None:
        self.requests: Counter[str] = Counter({k: 0 for k in REQUEST_KEYS})
        self.downloads: Counter[str] = Counter()
        self.bytes_served = 0
        self.auth: Counter[str] = Counter({"api_key": 0, "bearer_jwt": 0, "rejected": 0})
        self.audiences: Counter[str] = Counter()
        self.api_versions: set[str] = set()
        self.files_api.reset_stats()
        self.runs_started: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "downloads": dict(self.downloads),
            "bytes_served": self.bytes_served,
            "auth": dict(self.auth),
            "jwt_audiences": sorted(self.audiences),
            "jwt_audience_counts": dict(self.audiences),
            "api_versions": sorted(self.api_versions),
            "files": self.files_api.stats(),
            "runs_started": {"total": sum(self.runs_started.values()), "by_script": dict(self.runs_started)},
            "faults_served": dict(self.faults_served),
            "streams_open": self.streams_open,
            "schemas": self.schemas.stats(),
        }

    # ---- faults

    def _fault(self, script: Script, on: str) -> None:
        """Raise the next scripted fault of endpoint ``on``, if any is left (an outage: while it lasts)."""
        now = time.monotonic()
        spec = next(
            (
                f
                for f in script.faults
                if f.on == on
                and (f.times is None or f.times > 0)
                and (f.for_seconds is None or f.started is None or now - f.started < f.for_seconds)
            ),
            None,
        )
        if spec is None:
            return
        if spec.for_seconds is not None and spec.started is None:
            spec.started = now
        if spec.times is not None:
            spec.times -= 1
        self.faults_served[f"{on} {spec.status}"] += 1
        raise fault_error(spec)
