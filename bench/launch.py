"""Start the rig for a command-line run: the test CA first (trusted before aiohttp is imported)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tests.rig.rig import Rig

T = TypeVar("T")


@contextmanager
def started_rig() -> Iterator[Rig]:
    """Azurite, the identity endpoint and the Responses emulator, as the tests start them."""
    workdir = Path(tempfile.mkdtemp(prefix="ci-files-bench-"))
    try:
        from local_azure.certs import make_tls_files

        tls = make_tls_files(workdir / "tls")
        # aiohttp reads SSL_CERT_FILE once, at import: nothing before this line may import it.
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(tls.ca_pem)
        from tests.rig.rig import Rig

        with Rig(tls=tls) as rig:
            yield rig
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_with_services(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on a fresh event loop, then close the app's clients (as a worker stops)."""

    async def main() -> Any:
        from code_interpreter_files import services

        try:
            return await work()
        finally:
            if services._current is not None:
                await services._current[1].aclose()

    return asyncio.run(main())
