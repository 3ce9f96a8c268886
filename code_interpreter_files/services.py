"""Clients built once per worker and configuration, and reused by every invocation."""

from __future__ import annotations

from dataclasses import dataclass, field

from openai import AsyncOpenAI

from . import responses_api
from .identity import AppCredential, needs_credential
from .memory_budget import MemoryBudget
from .run_queue import RunQueue
from .run_table import RunTable
from .settings import MIB, Settings, load_settings, settings_fingerprint
from .singleflight import SingleFlight
from .storage import OutputStore


@dataclass
class Services:
    settings: Settings
    credential: AppCredential | None
    openai: AsyncOpenAI
    store: OutputStore
    table: RunTable
    queue: RunQueue
    memory_budget: MemoryBudget  # COPY_MEMORY_MB, shared by every copy in the worker
    finishing: SingleFlight = field(default_factory=SingleFlight)

    async def aclose(self) -> None:
        await self.openai.close()
        await self.store.close()
        await self.table.close()
        await self.queue.close()
        if self.credential is not None:
            await self.credential.close()


_current: tuple[tuple[str | None, ...], Services] | None = None


async def get_services() -> Services:
    """The services for the current app settings; raises SettingsError naming what is wrong.

    App settings change only with a restart in Azure; a changed environment (a local run, a test
    switching modes) gets new clients and the old ones are closed.
    """
    global _current
    fingerprint = settings_fingerprint()
    if _current is not None and _current[0] == fingerprint:
        return _current[1]
    settings = load_settings()
    credential = AppCredential() if needs_credential(settings) else None
    services = Services(
        settings=settings,
        credential=credential,
        openai=responses_api.build_client(settings, credential),
        store=OutputStore(settings, credential if settings.uses_identity_for_storage else None),
        table=RunTable(settings, credential if settings.uses_identity_for_storage else None),
        queue=RunQueue(settings, credential if settings.queue_service_url else None),
        memory_budget=MemoryBudget(settings.copy_memory_mb * MIB),
    )
    previous, _current = _current, (fingerprint, services)
    if previous is not None:
        await previous[1].aclose()
    return services
