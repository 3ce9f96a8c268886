"""What the suite tried and what it found, counted while it runs, for the README's "Reliability" section.

Tests add to `FIGURES`; the leak check fills `secrets_leaked`; `pytest_terminal_summary` in conftest
prints the lot at the end of every run, so the README's numbers come from a real run.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

FIGURES: Counter[str] = Counter()
#: Every runs-queue message the app sent in this session (conftest records them), as sent.
QUEUE_MESSAGES: list[str] = []
_COUNT_LOCK = threading.Lock()  # the load test verifies links from several threads

#: The printed rows: (label, counter names summed).
REPORT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inputs tried (hypothesis examples)", ("inputs_hypothesis",)),
    ("inputs tried (listed hostile cases)", ("inputs_listed",)),
    ("faults injected", ("faults_injected",)),
    ("runs verified", ("runs_verified",)),
    ("files verified (bytes and sha256 through their link)", ("files_verified",)),
    ("links security-checked (read-only, one blob, tamper)", ("links_checked",)),
    ("files lost", ("files_lost",)),
    ("crashes injected (copies killed or cancelled mid-run, then resumed)", ("crashes_injected",)),
    ("duplicate downloads (two instances finishing one run)", ("duplicate_downloads",)),
    (
        "foreign reads tried (another caller's or deployment's run, file or blob), all refused",
        ("foreign_reads_refused",),
    ),
    ("runs-queue messages checked (ids only, no URL)", ("queue_messages_checked",)),
    ("log lines scanned for secrets", ("log_lines_scanned",)),
    ("error bodies scanned for secrets", ("error_bodies_scanned",)),
    ("secrets leaked", ("secrets_leaked",)),
)


def count(name: str, n: int = 1) -> None:
    with _COUNT_LOCK:
        FIGURES[name] += n


def report_lines() -> list[str]:
    return [f"{label}: {sum(FIGURES[n] for n in names)}" for label, names in REPORT]


# ------------------------------------------------------------------------------------------------
# secrets: what must never appear in a log line or an error body

#: A JWT (header.payload.): every Entra ID token looks like this.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
#: A SAS signature in a URL, plain or percent-encoded; the SDKs' log policies replace it.
SIGNATURE_PARAM = re.compile(r"(?:[?&;\s]|^)sig(?:=|%3D)([^&\s\"'<>]+)", re.IGNORECASE)
REDACTED_VALUES = frozenset({"REDACTED", "*****", "%2A%2A%2A%2A%2A"})
#: The shape of a SAS signature (base64 of an HMAC-SHA256), to look up the ones the suite received.
SIGNATURE_SHAPE = re.compile(r"[A-Za-z0-9+/]{43}=")

#: Loggers of the test harness itself: its plain `httpx` clients fetch SAS links on purpose. The app
#: never uses `httpx` (the openai SDK uses `httpx2`, azure-core aiohttp): test_secrets checks that.
HARNESS_LOGGERS = frozenset({"httpx", "httpcore"})


@dataclass
class Secrets:
    """Known secret values (API key, identity header, account key, delegation keys, signatures)."""

    literals: set[str] = field(default_factory=set)
    signatures: set[str] = field(default_factory=set)

    def add(self, value: str | None) -> None:
        if value and len(value) >= 8:
            self.literals.add(value)

    def add_signature(self, value: str) -> None:
        self.signatures.add(value)

    def leaks(self, text: str) -> list[str]:
        """Why `text` leaks a secret; empty when it does not."""
        found: list[str] = []
        if JWT.search(text):
            found.append("a bearer token (JWT)")
        for match in SIGNATURE_PARAM.finditer(text):
            if match.group(1) not in REDACTED_VALUES:
                found.append("a SAS signature (sig=...)")
                break
        for literal in self.literals:
            if literal in text or (literal != unquote(literal) and unquote(literal) in text):
                found.append(f"a known secret ({literal[:4]}...)")
        if self.signatures:
            for variant in {text, unquote(text)}:
                if any(m.group(0) in self.signatures for m in SIGNATURE_SHAPE.finditer(variant)):
                    found.append("a SAS signature the suite received")
                    break
        return found


SECRETS = Secrets()


class LogCapture(logging.Handler):
    """Every log record of the session (app at DEBUG, everything else at INFO), kept for the secrets check."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.harness_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] in HARNESS_LOGGERS:
            self.harness_lines += 1
            return
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is still scanned as best we can
            text = f"{record.name} {record.msg!r} {record.args!r}"
        self.lines.append(text)


LOGS = LogCapture()
#: Bodies of every error answer the app gave during the session.
ERROR_BODIES: list[bytes] = []


def scan(lines: Iterable[str]) -> list[str]:
    """`where: why` for every leaking text."""
    problems = []
    for text in lines:
        for why in SECRETS.leaks(text):
            problems.append(f"{why}: {text[:300]!r}")
    return problems
