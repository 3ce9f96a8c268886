"""The output container in Blob Storage: streamed block uploads, read-only SAS links, run manifests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, ContentSettings, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, BlobServiceClient, ExponentialRetry

from .input_blobs import BlobReader
from .naming import (
    content_disposition,
    lock_blob,
    manifest_blob,
    run_info_blob,
    run_prefix,
    tombstone_blob,
    valid_unicode,
)
from .settings import Settings

SAS_START_SKEW = timedelta(minutes=5)  # clocks of callers and of the service differ a little
LEASE_SECONDS = 60  # the longest finite blob lease; a crashed holder's lease ends within this
LEASE_RENEW_SECONDS = 20
_KEY_MARGIN = timedelta(minutes=5)


# Retries of each storage request: 3, after about 3, 5 and 9 seconds (1 + 2**n, +-1 s). The SDK's
# default (15 + 3**n: 18, 24, 42 s) kept one request to a dead storage account going for 80+ s, so
# two failed operations spent a run's whole time budget (RUN_WAIT_SECONDS) and a clear error became
# a 202 "copying" loop. Throttling (503) still backs off; a dead account fails in about 20 s.
def _storage_retry() -> ExponentialRetry:
    return ExponentialRetry(retry_total=3, initial_backoff=1, increment_base=2, random_jitter_range=1)


@dataclass(frozen=True, kw_only=True)
class ExistingBlob:
    """A file blob an earlier attempt committed: a retry reuses it instead of copying it again."""

    name: str
    bytes: int
    sha256: str
    content_type: str
    container_id: str


class LeaseHeld(Exception):
    """Another request or instance is copying this run right now."""


class RunLease:
    """The one copy of a run in progress, across instances: a blob lease on `<run>/lock`, renewed
    while the copy runs. If renewing fails (the holder lost it), the copy is cancelled, so two
    instances never copy the same run at once; a crashed holder's lease ends within LEASE_SECONDS."""

    def __init__(self, lease: BlobLeaseClient) -> None:
        self._lease = lease
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLease:
        try:
            await self._lease.acquire(lease_duration=LEASE_SECONDS)
        except HttpResponseError as error:
            if error.status_code == 409:
                raise LeaseHeld() from None
            raise
        owner = asyncio.current_task()
        self._renewer = asyncio.create_task(self._renew(owner))
        return self

    async def _renew(self, owner: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            try:
                await self._lease.renew()
            except Exception:  # lost (broken by DELETE, or expired): stop copying at once
                if owner is not None:
                    owner.cancel()
                return

    async def __aexit__(self, *exc: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        with contextlib.suppress(HttpResponseError):
            await self._lease.release()


class OutputStore:
    """One per worker: a blob client, the output container, and a cached user delegation key."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None) -> None:
        retry = _storage_retry()
        if settings.storage_account_url:
            self._service = BlobServiceClient(settings.storage_account_url, credential=credential, retry_policy=retry)
            self._account_key: str | None = None
        else:
            assert settings.storage_connection_string
            self._service = BlobServiceClient.from_connection_string(
                settings.storage_connection_string.get_secret_value(), retry_policy=retry
            )
            self._account_key = self._service.credential.account_key
        self._container = self._service.get_container_client(settings.output_container)
        # Reading blobs back (input_blobs.py): one reader per container, bound here, never chosen per request.
        self.input_blobs = BlobReader(self._service.get_container_client(settings.input_container))
        self.output_blobs = BlobReader(self._container)
        self._https = urlsplit(self._service.url).scheme == "https"
        self._key_lifetime = timedelta(minutes=settings.sas_ttl_max_minutes) + timedelta(hours=1)
        self._key_needed_for = timedelta(minutes=settings.sas_ttl_max_minutes) + _KEY_MARGIN
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_key_expiry = datetime.min.replace(tzinfo=UTC)
        self._key_lock = asyncio.Lock()
        self._container_ready = False
        self._container_lock = asyncio.Lock()

    async def close(self) -> None:
        await self._service.close()

    async def ensure_container(self) -> None:
        """Create the output container on first use; once per worker."""
        if self._container_ready:
            return
        async with self._container_lock:
            if not self._container_ready:
                try:
                    await self._container.create_container()
                except ResourceExistsError:
                    pass
                except HttpResponseError as error:
                    # Roles scoped to the container (least privilege, infra/rbac.bicep) may not allow
                    # creating it: the infrastructure made it; a real absence shows on first write.
                    if error.status_code != 403:
                        raise
                self._container_ready = True

    def file_client(self, blob: str) -> BlobClient:
        """The client of one file blob of the output container (blob_upload.upload_stream writes it)."""
        return self._container.get_blob_client(blob)

    async def sign_read_url(self, blob: str, filename: str, ttl: timedelta) -> tuple[str, datetime]:
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

    async def write_manifest(self, response_id: str, manifest: dict[str, Any]) -> bool:
        """Create the manifest only if none exists (If-None-Match: *). False: another copy won."""
        # The model's text and paths may hold lone surrogates, which UTF-8 cannot encode.
        data = valid_unicode(json.dumps(manifest, ensure_ascii=False, indent=1)).encode()
        try:
            await self._container.upload_blob(
                manifest_blob(response_id),
                data,
                overwrite=False,
                content_settings=ContentSettings(content_type="application/json"),
            )
        except ResourceExistsError:
            return False
        return True

    async def read_manifest(self, response_id: str) -> dict[str, Any] | None:
        return await self._read_json(manifest_blob(response_id))

    async def _read_json(self, blob: str) -> dict[str, Any] | None:
        try:
            downloader = await self._container.download_blob(blob)
        except ResourceNotFoundError:
            return None
        return json.loads(await downloader.readall())

    async def create_marker(self, name: str) -> bool:
        """Create an empty blob only if none exists (If-None-Match: *); False: it existed already.

        Used for create-only markers such as the webhook replay guard (webhooks.py)."""
        await self.ensure_container()
        try:
            await self._container.upload_blob(name, b"", overwrite=False)
        except ResourceExistsError:
            return False
        return True

    async def delete_marker(self, name: str) -> None:
        await self.delete_blob(name)

    async def write_run_info(self, response_id: str, info: dict[str, Any]) -> None:
        """What the run was started with (callback URL, collect ...), for whoever finishes it."""
        await self.ensure_container()
        await self._container.upload_blob(
            run_info_blob(response_id),
            json.dumps(info).encode(),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )

    async def read_run_info(self, response_id: str) -> dict[str, Any]:
        return await self._read_json(run_info_blob(response_id)) or {}

    async def lease_run(self, response_id: str) -> RunLease:
        """The lease of the run's copy (see RunLease); the lock blob is made on first use."""
        await self.ensure_container()
        lock = self._container.get_blob_client(lock_blob(response_id))
        with contextlib.suppress(ResourceExistsError):
            await lock.upload_blob(b"", overwrite=False)
        return RunLease(BlobLeaseClient(lock))

    async def is_deleted(self, response_id: str) -> bool:
        """DELETE wrote the run's tombstone: no copy may commit anything for it any more.

        A listing, not Get Blob Properties: this runs after every commit, and the 404 of a missing
        blob costs an exception each time (measured: +90 MiB RSS left after 200 runs in tests/test_load.py)."""
        name = tombstone_blob(response_id)
        try:
            async for blob in self._container.list_blobs(name_starts_with=name, results_per_page=1):
                return blob.name == name
        except ResourceNotFoundError:  # no output container yet
            pass
        return False

    async def delete_blob(self, blob: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await self._container.delete_blob(blob)

    async def copied_files(self, response_id: str) -> dict[str, ExistingBlob]:
        """The file blobs earlier attempts committed, by file id (from their metadata)."""
        found: dict[str, ExistingBlob] = {}
        try:
            async for blob in self._container.list_blobs(
                name_starts_with=run_prefix(response_id) + "/", include=["metadata"]
            ):
                metadata = blob.metadata or {}
                if "file_id" in metadata and "sha256" in metadata:
                    found[unquote(metadata["file_id"])] = ExistingBlob(
                        name=blob.name,
                        bytes=blob.size,
                        sha256=metadata["sha256"],
                        content_type=blob.content_settings.content_type or "application/octet-stream",
                        container_id=unquote(metadata.get("container_id", "")),
                    )
        except ResourceNotFoundError:  # no output container yet
            pass
        return found

    async def delete_run(self, response_id: str) -> int:
        """The tombstone first (create-only), so that no copy on any instance commits anything for the
        run afterwards; then the lease is broken, the manifest deleted (nothing claims files that are
        going) and every other blob. The tombstone stays: the run is gone for good."""
        await self.ensure_container()
        with contextlib.suppress(ResourceExistsError):
            await self._container.upload_blob(tombstone_blob(response_id), b"", overwrite=False)
        lock = self._container.get_blob_client(lock_blob(response_id))
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            await BlobLeaseClient(lock).break_lease(lease_break_period=0)
        deleted = 0
        names = [manifest_blob(response_id)] + [
            b.name async for b in self._container.list_blobs(name_starts_with=run_prefix(response_id) + "/")
        ]
        for name in dict.fromkeys(names):
            if name == tombstone_blob(response_id):
                continue
            try:
                await self._container.delete_blob(name)
                deleted += 1
            except ResourceNotFoundError:
                pass
        return deleted
