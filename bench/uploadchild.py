"""One streamed upload in a fresh process: the app's `upload_stream` or azure-storage-blob's own
`upload_blob` (run by `bench.copies.uploader_stage`, one process per upload, for its peak RSS).

    python -m bench.uploadchild --way ours|sdk --bytes N

The parent sets the app's environment (identity for storage, maybe through the shaping proxy).
Both ways get the same source, an async iterator of 1 MiB chunks (no download: only the
uploader differs), the same block size (BLOCK_BYTES), the same blocks in flight
(BLOCKS_IN_FLIGHT), an MD5 of every block, the app's credential and a sha256 of the bytes. A small warm-up upload first
(token, connection); then the peak is reset and the measured upload runs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bench.memchild import PeakRss


async def source(size: int, hasher: Any) -> AsyncIterator[bytes]:
    from local_azure import content

    for chunk in content.chunks(f"upload-{size}", size):
        hasher.update(chunk)
        yield chunk


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from azure.storage.blob import ContentSettings
    from azure.storage.blob.aio import BlobServiceClient

    from code_interpreter_files import blob_upload
    from code_interpreter_files.services import get_services

    services = await get_services()
    await services.store.ensure_container()
    settings = services.settings
    sdk = BlobServiceClient(
        settings.storage_account_url or "",
        credential=services.credential,
        max_block_size=blob_upload.BLOCK_BYTES,
        max_single_put_size=blob_upload.BLOCK_BYTES,
    )
    container = settings.output_container

    async def upload(blob: str, size: int) -> str:
        hasher = hashlib.sha256()
        if args.way == "ours":
            stored = await blob_upload.upload_stream(
                services.store.file_client(blob),
                source(size, hasher),
                max_bytes=size,
                expected_bytes=size,
                filename="upload.bin",
                content_type="application/octet-stream",
                metadata={},
                budget=services.memory_budget,
            )
            return stored.sha256
        # The SDK takes metadata before the first byte: the sha256 can only follow in a second request.
        await sdk.get_blob_client(container, blob).upload_blob(
            source(size, hasher),
            overwrite=True,
            max_concurrency=blob_upload.BLOCKS_IN_FLIGHT,
            validate_content=True,  # each block's MD5, as ours sends it
            content_settings=ContentSettings(content_type="application/octet-stream"),
        )
        await sdk.get_blob_client(container, blob).set_blob_metadata({"sha256": hasher.hexdigest()})
        return hasher.hexdigest()

    prefix = f"bench-upload-{uuid.uuid4().hex}"
    await upload(f"{prefix}/warm.bin", 1024)
    with PeakRss() as rss:
        started, cpu_started = time.perf_counter(), time.process_time()
        digest = await upload(f"{prefix}/measured.bin", args.bytes)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    properties = await sdk.get_blob_client(container, f"{prefix}/measured.bin").get_blob_properties()
    if properties.size != args.bytes or properties.metadata.get("sha256") != digest:
        raise RuntimeError("the uploaded blob has the wrong size or hash")
    for name in ("warm.bin", "measured.bin"):
        await sdk.get_blob_client(container, f"{prefix}/{name}").delete_blob()
    await sdk.close()
    await services.aclose()
    return {
        "way": args.way,
        "bytes": args.bytes,
        "upload_s": elapsed,
        "cpu_s": cpu,
        "rss_growth_bytes": rss.growth,
        "peak_from": rss.peak_from,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--way", choices=("ours", "sdk"), required=True)
    parser.add_argument("--bytes", type=int, required=True)
    print(json.dumps(asyncio.run(measure(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
