"""TLS material for the local emulators (Azurite speaks HTTPS only when bearer auth is on)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA to trust, and the server certificate + key for 127.0.0.1/localhost."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a throw-away CA and a server certificate for ``127.0.0.1`` and ``localhost``.

    ``ca_pem`` is what clients trust (``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` /
    ``connection_verify``); ``cert_pem`` holds the leaf followed by the chain.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="code-interpreter-files test rig")
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(
        ca_pem=directory / "ca.pem",
        cert_pem=directory / "server-cert.pem",
        key_pem=directory / "server-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_pem))
    server.private_key_pem.write_to_path(str(files.key_pem))
    # Leaf first, then any intermediates: the order a TLS server expects.
    with files.cert_pem.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    return files
