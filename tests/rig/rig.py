"""The whole offline test rig: TLS files, Azurite, managed identity endpoint, Responses emulator."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from local_azure.azurite import Azurite
from local_azure.certs import TlsFiles, make_tls_files
from local_azure.identity_endpoint import IdentityControl, start_identity_endpoint, stop_process

if TYPE_CHECKING:
    from local_azure.emulator_client import EmulatorControl

StorageAuth = Literal["identity", "connection_string"]
ModelAuth = Literal["identity", "key"]
T = TypeVar("T")


class Rig:
    """Everything the app talks to, started once per pytest session.

    Pass ``tls`` made before aiohttp is imported, with its CA in ``SSL_CERT_FILE``, for the
    in-process async SDK clients to trust Azurite (aiohttp reads the variable once, at import).

    ``client_id`` makes the identity endpoint a user-assigned identity that only answers
    requests naming it; ``app_env`` then also sets ``AZURE_CLIENT_ID``.
    """

    DEPLOYMENT: ClassVar[str] = "gpt-4.1"
    OUTPUT_CONTAINER: ClassVar[str] = "outputs"
    #: Every variable ``app_env`` can set, so tests can clear them all first.
    ENV_NAMES: ClassVar[tuple[str, ...]] = (
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_API_KEY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "OUTPUT_CONTAINER",
        "OUTPUT_STORAGE_ACCOUNT_URL",
        "OUTPUT_STORAGE_CONNECTION_STRING",
        "RUNS_TABLE_SERVICE_URL",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_CLIENT_ID",
        "RUNS_QUEUE",
        "RUNS_QUEUE_STORAGE__queueServiceUri",
        "RUNS_QUEUE_STORAGE",
    )
    #: The queue the rig's app uses (``RUNS_QUEUE``); its poison queue is ``runs-poison``.
    RUNS_QUEUE: ClassVar[str] = "runs"

    def __init__(self, client_id: str | None = None, tls: TlsFiles | None = None) -> None:
        self.client_id = client_id
        self.api_key: str = secrets.token_urlsafe(24)
        self.identity_header: str = secrets.token_urlsafe(24)
        self._tmpdir: Path | None = None
        self._identity_proc: subprocess.Popen[str] | None = None
        self._emulator_proc: subprocess.Popen[Any] | None = None
        self._tls: TlsFiles | None = tls
        self._azurite: Azurite | None = None
        self._identity_url: str | None = None
        self._identity: IdentityControl | None = None
        self._emulator_url: str | None = None
        self._emulator: EmulatorControl | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Rig:
        """Start every piece; on failure stop whatever was started and re-raise."""
        from local_azure.emulator_client import EmulatorControl, start_emulator

        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="ci-files-rig-"))
            if self._tls is None:
                self._tls = make_tls_files(self._tmpdir / "tls")
            self._azurite = Azurite(self._tls, queue=True)
            self._azurite.start()
            self._identity_proc, self._identity_url = start_identity_endpoint(self.identity_header, self.client_id)
            self._identity = IdentityControl(self._identity_url)
            self._emulator_proc, self._emulator_url = start_emulator(self.api_key)
            self._emulator = EmulatorControl(self._emulator_url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every piece that runs and delete the temporary files (idempotent)."""
        if self._emulator is not None:
            self._emulator.close()
            self._emulator = None
        if self._emulator_proc is not None:
            from local_azure.emulator_client import stop_emulator

            stop_emulator(self._emulator_proc)
            self._emulator_proc = None
        if self._identity is not None:
            self._identity.close()
            self._identity = None
        if self._identity_proc is not None:
            stop_process(self._identity_proc)
            self._identity_proc = None
        if self._azurite is not None:
            self._azurite.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the running pieces --------------------------------------------------------------------
    @property
    def tls(self) -> TlsFiles:
        """CA, server certificate and key (the CA is what clients trust)."""
        return _started(self._tls)

    @property
    def azurite(self) -> Azurite:
        """Azurite's blob and queue services (in memory)."""
        return _started(self._azurite)

    @property
    def identity_url(self) -> str:
        """Token URL of the managed identity endpoint (the app's ``IDENTITY_ENDPOINT``)."""
        return _started(self._identity_url)

    @property
    def identity(self) -> IdentityControl:
        """Control client of the identity endpoint (fault modes, stats)."""
        return _started(self._identity)

    @property
    def emulator_url(self) -> str:
        """Base URL of the Responses emulator (the model API is at ``/openai/v1/``)."""
        return _started(self._emulator_url)

    @property
    def emulator(self) -> EmulatorControl:
        """Control client of the Responses emulator."""
        return _started(self._emulator)

    # -- configuration -------------------------------------------------------------------------
    def identity_env(self) -> dict[str, str]:
        """The managed identity variables of an App Service / Functions host."""
        env = {"IDENTITY_ENDPOINT": self.identity_url, "IDENTITY_HEADER": self.identity_header}
        if self.client_id is not None:
            env["AZURE_CLIENT_ID"] = self.client_id
        return env

    def app_env(self, storage: StorageAuth = "identity", model_auth: ModelAuth = "identity") -> dict[str, str]:
        """The environment an operator would set for the app with these auth choices."""
        if storage not in ("identity", "connection_string"):
            raise ValueError(f"unknown storage auth {storage!r}")
        if model_auth not in ("identity", "key"):
            raise ValueError(f"unknown model auth {model_auth!r}")
        ca = str(self.tls.ca_pem)
        env = {
            "AZURE_OPENAI_ENDPOINT": self.emulator_url,
            "AZURE_OPENAI_DEPLOYMENT": self.DEPLOYMENT,
            "SSL_CERT_FILE": ca,
            "REQUESTS_CA_BUNDLE": ca,
            "OUTPUT_CONTAINER": self.OUTPUT_CONTAINER,
        }
        if model_auth == "key":
            env["AZURE_OPENAI_API_KEY"] = self.api_key
        env["RUNS_QUEUE"] = self.RUNS_QUEUE
        if storage == "identity":
            env["OUTPUT_STORAGE_ACCOUNT_URL"] = self.azurite.account_url
            env["RUNS_TABLE_SERVICE_URL"] = self.azurite.table_url
            env["RUNS_QUEUE_STORAGE__queueServiceUri"] = self.azurite.queue_url
        else:
            env["OUTPUT_STORAGE_CONNECTION_STRING"] = self.azurite.connection_string
            env["RUNS_QUEUE_STORAGE"] = self.azurite.queue_connection_string
        if "identity" in (storage, model_auth):
            env.update(self.identity_env())
        assert set(env) <= set(self.ENV_NAMES)
        return env


def _started(value: T | None) -> T:
    if value is None:
        raise RuntimeError("the rig is not started")
    return value
