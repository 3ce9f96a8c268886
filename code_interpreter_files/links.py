"""Read-only links to one file blob: user delegation SAS (identity) or service SAS (account key), with the
delegation key cached for the worker so that a run costs no key request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from .naming import content_disposition

SAS_START_SKEW = timedelta(minutes=5)  # clocks of callers and of the service differ a little
_KEY_MARGIN = timedelta(minutes=5)


class LinkSigner:
    """Signs links to blobs of the output container only: no code path signs any other container
    (the runs table and the input container are never covered by a SAS)."""

    def __init__(
        self, service: BlobServiceClient, container: ContainerClient, account_key: str | None, max_ttl: timedelta
    ) -> None:
        self._service = service
        self._container = container
        self._account_key = account_key
        self._https = urlsplit(service.url).scheme == "https"
        self._key_lifetime = max_ttl + timedelta(hours=1)
        self._key_needed_for = max_ttl + _KEY_MARGIN
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_key_expiry = datetime.min.replace(tzinfo=UTC)
        self._key_lock = asyncio.Lock()

    @property
    def cached_key(self) -> UserDelegationKey | None:
        return self._delegation_key

    async def sign(self, blob: str, filename: str, ttl: timedelta) -> tuple[str, datetime]:
        """A read-only SAS for one blob; it also sets Content-Disposition so downloads keep the name."""
        now = datetime.now(UTC)
        expiry = (now + ttl).replace(microsecond=0)
        signing: dict[str, Any]
        if self._account_key is not None:
            signing = {"account_key": self._account_key}
        else:
            signing = {"user_delegation_key": await self._user_delegation_key(now)}
        token = generate_blob_sas(
            account_name=str(self._service.account_name),
            container_name=self._container.container_name,
            blob_name=blob,
            permission=BlobSasPermissions(read=True),
            start=now - SAS_START_SKEW,
            expiry=expiry,
            protocol="https" if self._https else None,
            content_disposition=content_disposition(filename),
            **signing,
        )
        return f"{self._container.get_blob_client(blob).url}?{token}", expiry

    async def _user_delegation_key(self, now: datetime) -> UserDelegationKey:
        """One key serves every link until shortly before it could no longer cover the longest TTL."""
        if self._delegation_key is None or self._delegation_key_expiry - now < self._key_needed_for:
            async with self._key_lock:
                if self._delegation_key is None or self._delegation_key_expiry - now < self._key_needed_for:
                    expiry = now + self._key_lifetime
                    self._delegation_key = await self._service.get_user_delegation_key(now - 3 * SAS_START_SKEW, expiry)
                    self._delegation_key_expiry = expiry
        return self._delegation_key
