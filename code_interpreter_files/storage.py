"""The output container in Blob Storage: the run's files, its manifest, and create-only markers.

Apart from it, along the SDK's own seams: the streamed block upload (blob_upload.py), the read-only
links (links.py), the runs table (run_table.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, BlobLeaseClient, BlobServiceClient, ExponentialRetry

from .input_blobs import BlobReader
from .links import LinkSigner
from .naming import LEGACY_BOOKKEEPING, manifest_blob, run_prefix, valid_unicode
from .settings import Settings


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


class OutputStore:
    """One per worker: the blob client of the output container, and its link signer."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None) -> None:
        retry = _storage_retry()
        account_key: str | None = None
        if settings.storage_account_url:
            self._service = BlobServiceClient(settings.storage_account_url, credential=credential, retry_policy=retry)
        else:
            assert settings.storage_connection_string
            self._service = BlobServiceClient.from_connection_string(
                settings.storage_connection_string.get_secret_value(), retry_policy=retry
            )
            account_key = self._service.credential.account_key
        self._container = self._service.get_container_client(settings.output_container)
        self.links = LinkSigner(
            self._service, self._container, account_key, timedelta(minutes=settings.sas_ttl_max_minutes)
        )
        # Reading blobs back (input_blobs.py): one reader per container, bound here, never chosen per request.
        self.input_blobs = BlobReader(self._service.get_container_client(settings.input_container))
        self.output_blobs = BlobReader(self._container)
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

    async def write_manifest(self, response_id: str, manifest: dict[str, Any]) -> bool:
        """Create the manifest only if none exists (If-None-Match: *). False: another copy won."""
        # The model's text and paths may hold lone surrogates, which UTF-8 cannot encode.
        data = valid_unicode(json.dumps(manifest, ensure_ascii=False, indent=1)).encode()
        await self.ensure_container()
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

    async def delete_run_blobs(self, response_id: str) -> int:
        """Every blob under the run's prefix: the manifest first (nothing then claims files that are
        going), then the files and what earlier versions kept there (lease, run record, tombstone)."""
        names = [manifest_blob(response_id)]
        try:
            names += [b.name async for b in self._container.list_blobs(name_starts_with=run_prefix(response_id) + "/")]
        except ResourceNotFoundError:  # no output container yet
            return 0
        deleted = 0
        lock = f"{run_prefix(response_id)}/{LEGACY_BOOKKEEPING['lock']}"
        if lock in names:  # an earlier version's copy lease: broken, so the blob can go
            with contextlib.suppress(HttpResponseError):
                await BlobLeaseClient(self._container.get_blob_client(lock)).break_lease(lease_break_period=0)
        deleted = 0
        for name in dict.fromkeys(names):
            try:
                await self._container.delete_blob(name)
                deleted += 1
            except ResourceNotFoundError:
                pass
        return deleted

    async def legacy_tombstone(self, response_id: str) -> bool:
        """Whether an earlier version's DELETE left its tombstone blob (`<run>/deleted`)."""
        return await self._exists(f"{run_prefix(response_id)}/{LEGACY_BOOKKEEPING['tombstone']}")

    async def legacy_run_info(self, response_id: str) -> dict[str, Any]:
        """The start record an earlier version kept in `<run>/run.json` (inputs, callback, ...), or {}."""
        return await self._read_json(f"{run_prefix(response_id)}/{LEGACY_BOOKKEEPING['run_info']}") or {}

    async def _exists(self, name: str) -> bool:
        """A listing, not Get Blob Properties: the 404 of a missing blob costs an exception each time
        (measured: +90 MiB RSS left after 200 runs in tests/test_load.py)."""
        try:
            async for blob in self._container.list_blobs(name_starts_with=name, results_per_page=1):
                return bool(blob.name == name)
        except ResourceNotFoundError:  # no output container yet
            pass
        return False

    async def markers_older_than(self, prefix: str, before: datetime, limit: int) -> list[str]:
        """Marker blobs under `prefix` last written before `before` (the retention sweep deletes them)."""
        old: list[str] = []
        try:
            async for blob in self._container.list_blobs(name_starts_with=prefix):
                if blob.last_modified is not None and blob.last_modified < before:
                    old.append(blob.name)
                    if len(old) >= limit:
                        break
        except ResourceNotFoundError:
            pass
        return old
