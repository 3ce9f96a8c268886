"""Session rig (Azurite over HTTPS, managed identity endpoint, Responses emulator) and app helpers.

The test CA is made before anything imports aiohttp and put in SSL_CERT_FILE / REQUESTS_CA_BUNDLE,
as an operator would set them before the worker starts: aiohttp reads them once, at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from local_azure.certs import make_tls_files

TLS = make_tls_files(Path(tempfile.mkdtemp(prefix="ci-files-tls-")))
os.environ["SSL_CERT_FILE"] = str(TLS.ca_pem)
os.environ["REQUESTS_CA_BUNDLE"] = str(TLS.ca_pem)

import logging  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
from aiohttp import web  # noqa: E402

import function_app  # noqa: E402
from code_interpreter_files.settings import SETTING_NAMES  # noqa: E402
from local_azure.azurite import ACCOUNT_KEY  # noqa: E402
from local_azure.funchost import FuncHost  # noqa: E402
from local_azure.queue_host import QueueHost  # noqa: E402
from tests import figures  # noqa: E402
from tests.appclient import FUNCTIONS, AppClient  # noqa: E402
from tests.helpers import SECRET, Receiver  # noqa: E402
from tests.rig.rig import Rig  # noqa: E402

# Every log line of the session, for the secrets check at the end: the app at DEBUG, the SDKs
# (azure-core's HTTP logging policy, azure-identity, openai, httpx2, aiohttp) and the rest at INFO.
logging.getLogger().addHandler(figures.LOGS)
logging.getLogger().setLevel(logging.INFO)
for _name in ("azure", "openai", "httpx", "httpx2", "aiohttp"):
    logging.getLogger(_name).setLevel(logging.INFO)
logging.getLogger("code_interpreter_files").setLevel(logging.DEBUG)
figures.SECRETS.add(ACCOUNT_KEY)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "run_last: run after every other test (the session-wide checks)")


def _record_queue_messages() -> None:
    """Every message the app sends to the runs queue, for the session-wide check that none carries a URL
    (tests/test_secrets.py): a spy on the one method that sends, the message text as it goes on the wire."""
    from code_interpreter_files.run_queue import RunQueue, encode_message

    send = RunQueue._send

    async def recording(self: RunQueue, message: object, delay_seconds: int) -> str:
        figures.QUEUE_MESSAGES.append(encode_message(message))  # type: ignore[arg-type]
        return await send(self, message, delay_seconds)  # type: ignore[arg-type]

    RunQueue._send = recording  # type: ignore[method-assign]


_record_queue_messages()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


def session_leaks() -> list[str]:
    """Every secret found in the session's log lines and in the error bodies the app answered."""
    bodies = [body.decode("utf-8", "replace") for body in figures.ERROR_BODIES]
    return figures.scan(figures.LOGS.lines) + figures.scan(bodies)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = session_leaks()
    figures.FIGURES["secrets_leaked"] = len(leaks)
    figures.FIGURES["log_lines_scanned"] = len(figures.LOGS.lines)
    figures.FIGURES["error_bodies_scanned"] = len(figures.ERROR_BODIES)
    session.config.stash[_LEAKS] = leaks
    if leaks and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEAKS = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    terminalreporter.section("reliability figures (README)")
    for line in figures.report_lines():
        terminalreporter.write_line(line)
    for leak in config.stash.get(_LEAKS, [])[:20]:
        terminalreporter.write_line(f"LEAK: {leak}", red=True)


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    with Rig(tls=TLS) as started:
        figures.SECRETS.add(started.api_key)
        figures.SECRETS.add(started.identity_header)
        yield started


@pytest.fixture
def configure(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """Set the app's environment for one test: `configure(storage=..., model_auth=..., NAME=value)`."""

    def apply(storage: str = "identity", model_auth: str = "identity", **settings: object) -> dict[str, str]:
        for name in set(Rig.ENV_NAMES) | set(SETTING_NAMES):
            if name not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
                monkeypatch.delenv(name, raising=False)
        env = rig.app_env(storage, model_auth)  # type: ignore[arg-type]
        env.update({name: str(value) for name, value in settings.items()})
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    apply()
    return apply


@pytest.fixture
def app(rig: Rig, configure: Callable[..., dict[str, str]], caplog: pytest.LogCaptureFixture) -> Iterator[AppClient]:
    caplog.set_level(logging.DEBUG, logger="code_interpreter_files")
    client = AppClient(rig)
    yield client
    # Every SAS link the test received passes the security checks, even those it did not fetch.
    client.check_remaining_links()
    client.remember_secrets()
    client.close()


@pytest.fixture
def queue_env(configure: Callable[..., dict[str, str]]) -> dict[str, str]:
    """A queue of this test's own (other tests' runs queue their finishes too), callbacks to loopback."""
    return configure(
        RUNS_QUEUE=f"q{uuid.uuid4().hex[:12]}", CALLBACK_ALLOWED_HOSTS="127.0.0.1", CALLBACK_SIGNING_SECRET=SECRET
    )


@pytest.fixture
async def host(queue_env: dict[str, str]) -> AsyncIterator[QueueHost]:
    """The Functions host's part for the queue triggers, in this process (see local_azure/queue_host.py)."""
    async with QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05) as queue_host:
        yield queue_host


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A callback receiver on loopback; its URL carries a token in the query, as real receivers' do."""
    got = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/run-done", got.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"http://127.0.0.1:{port}/hooks/run-done?token=abc"
    yield got
    await runner.cleanup()


@pytest.fixture
async def funchost(configure: Callable[..., dict[str, str]]) -> AsyncIterator[FuncHost]:
    """The app served over HTTP on a loopback port (local_azure/funchost.py), on the session's event loop
    (where the app's async clients live): what the client and the notebook talk to."""
    async with FuncHost(function_app.app) as host:
        yield host


@pytest.fixture(scope="session", autouse=True)
async def _close_the_apps_clients() -> AsyncIterator[None]:
    """At the end of the session, close the clients the app built (as a worker does when it stops), so
    no session or connector is left for the interpreter's exit to complain about."""
    yield
    from code_interpreter_files import services

    if services._current is not None:
        await services._current[1].aclose()
