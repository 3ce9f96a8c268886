"""Reading blobs back, one container per reader: the caller's input files (INPUT_CONTAINER) and the
outputs a conversation carries into a new container (OUTPUT_CONTAINER, names from the app's manifests).

A reader is bound to one container client when the app starts, so no request can choose the container:
the blob name is the only part of the URL a caller's string reaches, and it must be a plain relative
path (naming.blob_path_problem). Before each request the reader also checks the URL the HTTP stack will
send: aiohttp parses the SDK's URL with yarl, which removes `.`/`..` segments and decodes `%2e`
(measured: `inputs/../outputs/x` and `inputs/%2e%2e/outputs/x` both became `outputs/x`), and that is
how a name once reached another container. The path after that parsing must still be exactly the
container's path plus the name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobClient, ContainerClient
from yarl import URL

from .naming import blob_path_problem


class InvalidBlobName(ValueError):
    """A name that is not a plain relative path inside the reader's container: never requested.
    The message says what is wrong with it (`has a '..' segment`), never repeating the name."""


def sent_path(url: str) -> str:
    """The (decoded) path aiohttp requests for `url`: yarl's parse, as `ClientSession.request` does."""
    return URL(url).path


class BlobReader:
    """Size, ETag and ranged reads of the blobs of ONE container."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container
        self._prefix = sent_path(container.url).rstrip("/") + "/"

    @property
    def container_name(self) -> str:
        return str(self._container.container_name)

    def blob_client(self, name: str) -> BlobClient:
        """The client of `name` in this container; InvalidBlobName unless the request stays inside it."""
        problem = blob_path_problem(name)
        if problem is not None:
            raise InvalidBlobName(problem)
        client = self._container.get_blob_client(name)
        if sent_path(client.url) != self._prefix + name:
            raise InvalidBlobName(f"would be requested as another path than {self.container_name}/<name>")
        return client

    async def version(self, name: str) -> tuple[int, str] | None:
        """Size and ETag of the blob; None when it (or the container) does not exist."""
        try:
            properties = await self.blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return int(properties.size), str(properties.etag)

    async def read(self, name: str, *, size: int, etag: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The blob's bytes in ranged reads of at most `chunk_bytes`, each pinned to `etag`.

        Ranged GETs rather than one download: the SDK's downloader fetches its first 32 MiB
        (max_single_get_size) in one piece, so memory would follow the file size up to that; here it
        is one range at a time whatever the size. A blob replaced midway fails (412) instead of
        mixing two versions.
        """
        client = self.blob_client(name)
        offset = 0
        while offset < size:
            length = min(chunk_bytes, size - offset)
            downloader = await client.download_blob(
                offset=offset, length=length, etag=etag, match_condition=MatchConditions.IfNotModified
            )
            data = await downloader.readall()
            if not data:
                break
            offset += len(data)
            yield data
