"""Azurite (blob service, optionally the queue service too) as a child process, over HTTPS with bearer-token auth."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from local_azure.certs import TlsFiles

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_BIN = REPO_ROOT / "node_modules" / ".bin"
AZURITE_BLOB = NODE_BIN / "azurite-blob"
# Blob + queue (+ table) in one process: one Node runtime instead of two, one restart for both.
AZURITE_ALL = NODE_BIN / "azurite"

ACCOUNT_NAME = "devstoreaccount1"
# The well-known development storage key (public, documented by Microsoft).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """Azurite's blob service on ``https://127.0.0.1:<port>/devstoreaccount1``.

    ``tls=None`` runs plain Azurite (HTTP, shared key only), as ``UseDevelopmentStorage=true`` expects.
    ``location=None`` keeps data in memory; a directory keeps it on disk so that
    ``restart()`` (same port) finds the previous blobs again.
    ``queue=True`` also serves the queue service (same certificate, same ``--oauth basic``) on
    ``queue_port``, for the Functions queue trigger and the app's sender.
    ``debug_log`` is Azurite's ``--debug`` file: every request as the service received it (method,
    URL, headers, including bearer tokens) and the account, container and blob it understood.
    """

    def __init__(
        self,
        tls: TlsFiles | None,
        *,
        location: Path | None = None,
        port: int | None = None,
        queue: bool = False,
        queue_port: int | None = None,
        table_port: int | None = None,
        startup_timeout: float = 60.0,
        debug_log: Path | None = None,
        own_process_group: bool = False,
    ) -> None:
        self.tls = tls
        self.debug_log = debug_log
        self.own_process_group = own_process_group  # a terminal's Ctrl-C then reaches only its starter
        self.queue = queue
        self._queue_port = queue_port
        self._table_port: int | None = table_port
        self.location = Path(location) if location is not None else None
        self._port = port
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_path: Path | None = None

    # -- public properties ---------------------------------------------------------------
    @property
    def port(self) -> int:
        """The blob port (chosen on first start, kept across restarts)."""
        if self._port is None:
            raise RuntimeError("Azurite has not been started")
        return self._port

    @property
    def queue_port(self) -> int:
        """The queue port (``queue=True`` only; chosen on first start, kept across restarts)."""
        if not self.queue:
            raise RuntimeError("this Azurite serves no queue service (queue=False)")
        if self._queue_port is None:
            raise RuntimeError("Azurite has not been started")
        return self._queue_port

    @property
    def queue_url(self) -> str:
        """``https://127.0.0.1:<queue port>/devstoreaccount1``: the queue service URL (``queueServiceUri``)."""
        return f"{self.scheme}://127.0.0.1:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def queue_connection_string(self) -> str:
        """Account-key connection string with ``QueueEndpoint`` (``QueueServiceClient.from_connection_string``)."""
        return (
            f"DefaultEndpointsProtocol={self.scheme};"
            f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.queue_url};"
        )

    @property
    def table_port(self) -> int:
        """The table port (``queue=True`` only: the table service runs with the queue service)."""
        if not self.queue or self._table_port is None:
            raise RuntimeError("this Azurite serves no table service (queue=False), or has not been started")
        return self._table_port

    @property
    def table_url(self) -> str:
        """``http(s)://127.0.0.1:<table port>/devstoreaccount1`` (``queue=True`` only: the table service runs too)."""
        return f"{self.scheme}://127.0.0.1:{self.table_port}/{ACCOUNT_NAME}"

    @property
    def account_url(self) -> str:
        """``https://127.0.0.1:<port>/devstoreaccount1`` (path-style account URL)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def connection_string(self) -> str:
        """Account-key connection string with ``BlobEndpoint`` (and ``TableEndpoint`` when tables are served)."""
        tables = f"TableEndpoint={self.table_url};" if self.queue else ""
        return (
            f"DefaultEndpointsProtocol={self.scheme};"
            f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.account_url};{tables}"
        )

    @property
    def services_connection_string(self) -> str:
        """One account-key connection string with the blob, queue and table endpoints (``queue=True``): what
        ``UseDevelopmentStorage=true`` means, on this instance's ports."""
        return f"{self.connection_string}QueueEndpoint={self.queue_url};"  # connection_string names the table

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------
    def command(self) -> list[str]:
        """The Azurite command line for the current settings."""
        cmd = [
            str(AZURITE_ALL if self.queue else AZURITE_BLOB),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]  # fmt: skip
        if self.queue:
            assert self._queue_port is not None and self._table_port is not None
            cmd += ["--queueHost", "127.0.0.1", "--queuePort", str(self._queue_port)]
            cmd += ["--tableHost", "127.0.0.1", "--tablePort", str(self._table_port)]
        if self.tls is not None:
            cmd += ["--oauth", "basic", "--cert", str(self.tls.cert_pem), "--key", str(self.tls.key_pem)]
        if self.debug_log is not None:
            cmd += ["--debug", str(self.debug_log)]
        if self.location is None:
            cmd.append("--inMemoryPersistence")
        else:
            cmd += ["--location", str(self.location)]
        return cmd

    def start(self) -> None:
        """Start Azurite and wait until it answers HTTPS requests."""
        if self.running:
            return
        binary = AZURITE_ALL if self.queue else AZURITE_BLOB
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run `npm ci` in {REPO_ROOT}")
        if self._port is None:
            self._port = free_port()
        if self.queue:
            self._queue_port = self._queue_port or free_port()
            self._table_port = self._table_port or free_port()
        if self.location is not None:
            self.location.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # The script's shebang is `#!/usr/bin/env node`: put the pinned Node 22 first.
        env["PATH"] = f"{NODE_BIN}{os.pathsep}{env.get('PATH', '')}"
        fd, name = tempfile.mkstemp(prefix="azurite-stderr-", suffix=".log")
        self._stderr_path = Path(name)
        with os.fdopen(fd, "wb") as stderr:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=str(REPO_ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                process_group=0 if self.own_process_group else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Azurite (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._stderr_path is not None:
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None

    def restart(self) -> None:
        """Stop and start again on the same port (data survives only with ``location``)."""
        self.stop()
        self.start()

    def stderr_text(self) -> str:
        """What Azurite wrote to stderr so far (for diagnostics)."""
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        return self._stderr_path.read_text(errors="replace")

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.tls.ca_pem)) if self.tls is not None else None
        deadline = time.monotonic() + self.startup_timeout
        for url in [self.account_url] + ([self.queue_url] if self.queue else []):
            self._wait_url(url, context, deadline)

    def _wait_url(self, url: str, context: ssl.SSLContext | None, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {self._proc.returncode}:\n{self.stderr_text()}")
            try:
                with urllib.request.urlopen(url, context=context, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer (Azurite says 400/403 here) means it is serving
            except (OSError, ssl.SSLError) as exc:
                last_error = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"Azurite did not answer on {url} within {self.startup_timeout:.0f}s "
            f"(last error: {last_error!r}):\n{self.stderr_text()}"
        )

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
