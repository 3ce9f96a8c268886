"""Session rig (Azurite over HTTPS, managed identity endpoint, Responses emulator) and app helpers.

The test CA is made before anything imports aiohttp and put in SSL_CERT_FILE / REQUESTS_CA_BUNDLE,
as an operator would set them before the worker starts: aiohttp reads them once, at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.rig.certs import make_tls_files

TLS = make_tls_files(Path(tempfile.mkdtemp(prefix="ci-files-tls-")))
os.environ["SSL_CERT_FILE"] = str(TLS.ca_pem)
os.environ["REQUESTS_CA_BUNDLE"] = str(TLS.ca_pem)

import logging  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from code_interpreter_files.settings import SETTING_NAMES  # noqa: E402
from tests.appclient import AppClient  # noqa: E402
from tests.rig.rig import Rig  # noqa: E402


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    with Rig(tls=TLS) as started:
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
def app(rig: Rig, configure: Callable[..., dict[str, str]], caplog: pytest.LogCaptureFixture) -> AppClient:
    caplog.set_level(logging.INFO, logger="code_interpreter_files")
    return AppClient(rig)
