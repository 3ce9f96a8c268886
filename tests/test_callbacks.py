"""Callbacks: the SSRF battery for callback_url, and real deliveries to local HTTP/HTTPS receivers.

Receivers verify the signature with the openai SDK (`client.webhooks.verify_signature`) and with
the standardwebhooks library, as a caller's receiver would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import aiohttp.connector
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient
from openai import OpenAI
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from code_interpreter_files import callbacks, public_addresses
from code_interpreter_files.callbacks import (
    MAX_ATTEMPTS,
    DeliveryResult,
    backoff,
    callback_id,
    deliver,
    deliver_and_schedule_retry,
    normalize_host,
    retry_delay,
    validate_callback_url,
)
from code_interpreter_files.errors import ServiceError
from code_interpreter_files.http_api import status_of
from code_interpreter_files.public_addresses import GuardedResolver, address_refused, guarded_connector
from code_interpreter_files.run_queue import CallbackMessage, RunQueue, parse_message
from code_interpreter_files.settings import Settings, load_settings
from local_azure.azurite import free_port
from local_azure.certs import TlsFiles, make_tls_files
from tests import figures
from tests.rig.rig import Rig

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
figures.SECRETS.add(SECRET.removeprefix("whsec_"))  # the session-wide log scan looks for it
#: Addresses that lead back into the platform or a private network (issue 18). The battery lists them
#: in CALLBACK_ALLOWED_HOSTS, as a careless operator could: they are refused all the same.
PLATFORM_ADDRESSES = [
    "168.63.129.16",  # Azure's host address (WireServer)
    "100.100.100.200",  # carrier-grade NAT 100.64.0.0/10: a cloud metadata service
    "100.64.0.1",
    "10.0.0.4",  # private
    "172.16.0.1",
    "192.168.1.1",
    "192.0.0.192",  # IETF protocol assignments (a cloud metadata service)
    "198.18.0.1",  # benchmarking
    "255.255.255.255",
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:a83f:8110::1",  # 6to4 of 168.63.129.16
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001::a9fe:a9fe",  # Teredo, server 0.0.0.0
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a83f:8110",  # NAT64 of 168.63.129.16
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "::ffff:a83f:8110",  # IPv4-mapped 168.63.129.16
    "::ffff:a9fe:a9fe",  # IPv4-mapped 169.254.169.254
    "::ffff:a00:4",  # IPv4-mapped 10.0.0.4
    "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
    "::808:808",  # IPv4-compatible 8.8.8.8 (deprecated, refused whatever it carries)
    "fd00:ec2::254",  # unique local (a cloud metadata service)
    "fe80::1",
    "2001:db8::1",  # documentation
    "ff02::1",
]
ALLOWED = "allowed.com,127.0.0.1,localhost,bücher.example,::1,Upper.Example.," + ",".join(PLATFORM_ADDRESSES)


def make_settings(hosts: str = ALLOWED, secret: str | None = SECRET) -> Settings:
    env = {
        "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
        "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "RUNS_QUEUE_STORAGE": "UseDevelopmentStorage=true",
    }
    if hosts:
        env["CALLBACK_ALLOWED_HOSTS"] = hosts
    if secret:
        env["CALLBACK_SIGNING_SECRET"] = secret
    return load_settings(env)


# -- SSRF battery --------------------------------------------------------------------------------

REFUSED = [
    "https://evil.com/hook",  # not in the list
    "https://allowed.com.evil.com/hook",  # suffix trick
    "https://evilallowed.com/hook",
    "https://sub.allowed.com/hook",  # exact match only, no subdomains
    "https://evil.com#@allowed.com",  # fragment trick: the host is evil.com
    "https://evil.com/#@allowed.com",
    "https://evil.com?@allowed.com",
    "https://allowed.com@evil.com/hook",  # userinfo trick: the host is evil.com
    "https://user:pw@allowed.com/hook",  # userinfo on an allowed host
    "https://user@allowed.com/hook",
    "https://:@allowed.com/hook",
    "https://allowed.com\\@evil.com/",  # backslash parser differential
    "https://allowed.com%2eevil.com/",
    "https://allowed.com%40evil.com/",
    "https://allowed.com\t.evil.com/",  # control characters are stripped by some parsers
    "https://allowed.com\n/",
    " https://allowed.com/",
    "https://allowed.com /",
    "http://allowed.com/hook",  # http to a non-loopback host
    "ftp://allowed.com/hook",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "//allowed.com/hook",  # scheme-relative
    "allowed.com/hook",
    "https:allowed.com/hook",
    "https:///allowed.com/hook",
    "https://allowed.com/hook#fragment",
    "http://2130706433/",  # 127.0.0.1 in other spellings
    "http://0x7f000001/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://127.0.0.1.nip.io/",
    "http://[::ffff:127.0.0.1]/",
    "http://[0:0:0:0:0:ffff:7f00:1]/",
    "http://169.254.169.254/metadata",  # cloud metadata
    "http://[fd00:ec2::254]/",
    "http://0.0.0.0/",
    "https://evil.com\u3002allowed.com/",  # ideographic full stop becomes a dot
    "https://bücher.example.evil.com/",
    "https://" + "a" * 2100 + ".allowed.com/",
    "https://allowed.com/" + "a" * 2100,
    "",
    *(f"https://[{a}]/hook" if ":" in a else f"https://{a}/hook" for a in PLATFORM_ADDRESSES),
]


@pytest.mark.parametrize("url", REFUSED)
def test_ssrf_battery_refused(url: str) -> None:
    with pytest.raises(ServiceError) as raised:
        validate_callback_url(url, make_settings())
    assert (status_of(raised.value), raised.value.code) == (400, "callback_not_allowed")
    assert "evil" not in raised.value.message  # the caller's URL is never echoed


ACCEPTED = [
    "https://allowed.com/hook?token=abc",
    "https://ALLOWED.COM/hook",
    "https://allowed.com./hook",  # trailing dot
    "https://Allowed.Com.:8443/hook",
    "https://bücher.example/hook",  # IDN, and its punycode
    "https://BÜCHER.example/hook",
    "https://xn--bcher-kva.example/hook",
    "https://upper.example/hook",  # the list entry was "Upper.Example."
    "http://127.0.0.1:8080/hook",  # http for loopback only
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://[::1]:9000/hook",
    "https://127.0.0.1/hook",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_allowed_urls(url: str) -> None:
    assert validate_callback_url(url, make_settings()) == url


def test_callbacks_off_without_allowed_hosts_or_secret() -> None:
    with pytest.raises(ServiceError, match="CALLBACK_ALLOWED_HOSTS") as raised:
        validate_callback_url("https://allowed.com/hook", make_settings(hosts="", secret=None))
    assert raised.value.code == "callback_not_allowed"


def test_signing_secret_required_with_allowed_hosts() -> None:
    with pytest.raises(Exception, match="CALLBACK_SIGNING_SECRET"):
        make_settings(secret=None)
    with pytest.raises(Exception, match="CALLBACK_SIGNING_SECRET"):
        make_settings(secret="not-a-whsec-secret")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Allowed.COM.", "allowed.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("127.1", None),
        ("0x7f.0.0.1", None),
        ("2130706433", None),
        ("a..b", None),
        ("under_score.com", None),
        ("", None),
    ],
)
def test_normalize_host(host: str, expected: str | None) -> None:
    assert normalize_host(host) == expected


def test_backoff_schedule_is_bounded() -> None:
    failed = DeliveryResult(delivered=False, status=503, retryable=True, reason="http_503", webhook_id="msg_x")
    delays = [retry_delay(failed, attempt) for attempt in range(1, MAX_ATTEMPTS + 1)]
    assert delays[:-1] == [backoff(a) for a in range(1, MAX_ATTEMPTS)]
    assert delays[-1] is None  # gives up after MAX_ATTEMPTS
    assert all(d is not None and d > 0 for d in delays[:-1])
    refused = DeliveryResult(delivered=False, status=400, retryable=False, reason="http_400", webhook_id="msg_x")
    assert retry_delay(refused, 1) is None
    throttled = DeliveryResult(
        delivered=False, status=429, retryable=True, reason="http_429", webhook_id="msg_x", retry_after_seconds=900
    )
    assert retry_delay(throttled, 1) == 900


# -- real receivers ------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local webhook receiver; records every request it got."""

    base_url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def start_receiver(rig: Rig) -> AsyncIterator[StartReceiver]:
    runners: list[web.AppRunner] = []

    async def start(
        status: int = 204, *, tls: bool = False, host: str = "127.0.0.1", cert: TlsFiles | None = None, **headers: str
    ) -> Receiver:
        port = free_port()
        scheme = "https" if tls else "http"
        receiver = Receiver(base_url=f"{scheme}://{host}:{port}")

        async def handle(request: web.Request) -> web.StreamResponse:
            receiver.requests.append((request.path_qs, dict(request.headers), await request.read()))
            if 300 <= status < 400:
                return web.Response(status=status, headers={"Location": headers["location"]})
            return web.Response(status=status, headers={k.replace("_", "-"): v for k, v in headers.items()})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            files = cert or rig.tls
            context.load_cert_chain(str(files.cert_pem), str(files.key_pem))
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


PAYLOAD: dict[str, Any] = {"response_id": "resp_cb1", "status": "completed", "files": [], "text": "ünïcode"}


def _verify_both_ways(headers: dict[str, str], body: bytes) -> Any:
    OpenAI(api_key="unused").webhooks.verify_signature(body, headers, secret=SECRET)
    return Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize("tls", [False, True], ids=["http-loopback", "https"])
async def test_delivery_is_signed_and_verifiable(
    start_receiver: StartReceiver, tls: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = await start_receiver(204, tls=tls, host="localhost" if tls else "127.0.0.1")
    url = f"{receiver.base_url}/hooks/run?token=receiver-secret-token"
    result = await deliver(url, PAYLOAD, make_settings())
    assert result == DeliveryResult(
        delivered=True, status=204, retryable=False, reason="delivered", webhook_id=callback_id("resp_cb1")
    )
    [(path, headers, body)] = receiver.requests
    assert path == "/hooks/run?token=receiver-secret-token"
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == callback_id("resp_cb1")
    assert _verify_both_ways(headers, body) == PAYLOAD
    # Everything but the receiver's own access log (which is the receiver's business).
    sender_logs = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "callback to" in sender_logs
    assert "receiver-secret-token" not in sender_logs and "/hooks/run" not in sender_logs
    assert SECRET.removeprefix("whsec_") not in sender_logs


async def test_forged_or_tampered_callback_fails_verification(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver(200)
    await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings())
    [(_, headers, body)] = receiver.requests
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"completed", b"failed"), headers)


async def test_same_webhook_id_on_every_attempt(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver(503)
    first = await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings())
    second = await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings())
    assert first.webhook_id == second.webhook_id
    assert [h["webhook-id"] for _, h, _ in receiver.requests] == [first.webhook_id] * 2
    assert (first.delivered, first.retryable, first.reason) == (False, True, "http_503")


async def test_redirect_is_not_followed(start_receiver: StartReceiver) -> None:
    landing = await start_receiver(200)
    redirecting = await start_receiver(307, location=f"{landing.base_url}/landed")
    result = await deliver(f"{redirecting.base_url}/hook", PAYLOAD, make_settings())
    assert (result.delivered, result.status, result.retryable, result.reason) == (
        False,
        307,
        False,
        "redirect_not_followed",
    )
    assert len(redirecting.requests) == 1
    assert landing.requests == []  # never followed


@pytest.mark.parametrize(
    ("status", "retryable", "retry_after"),
    [(400, False, None), (401, False, None), (404, False, None), (429, True, 120), (500, True, None)],
)
async def test_failure_statuses(
    start_receiver: StartReceiver, status: int, retryable: bool, retry_after: int | None
) -> None:
    extra = {"retry_after": str(retry_after)} if retry_after else {}
    receiver = await start_receiver(status, **extra)
    result = await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings())
    assert (result.delivered, result.status, result.retryable) == (False, status, retryable)
    assert result.retry_after_seconds == retry_after


async def test_connection_refused_is_retryable() -> None:
    result = await deliver(f"http://127.0.0.1:{free_port()}/hook", PAYLOAD, make_settings())
    assert (result.delivered, result.status, result.retryable) == (False, None, True)
    assert result.reason.startswith("network_error:")
    assert retry_delay(result, 1) == backoff(1)


async def test_https_receiver_with_untrusted_certificate_fails(start_receiver: StartReceiver, tmp_path: Path) -> None:
    """TLS is verified: a receiver whose certificate comes from a CA the worker does not trust gets nothing."""
    other = make_tls_files(tmp_path / "other-ca")
    receiver = await start_receiver(200, tls=True, cert=other)
    result = await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings())
    assert (result.delivered, result.retryable) == (False, True)
    assert result.reason.startswith("network_error:")
    assert receiver.requests == []


async def test_url_refused_at_delivery_is_not_sent(start_receiver: StartReceiver) -> None:
    """Settings changed after POST time: the delivery checks the URL again and sends nothing."""
    receiver = await start_receiver(200)
    result = await deliver(f"{receiver.base_url}/hook", PAYLOAD, make_settings(hosts="allowed.com"))
    assert (result.delivered, result.retryable, result.reason) == (False, False, "callback_not_allowed")
    assert receiver.requests == []


async def test_failed_delivery_queues_the_next_attempt_with_backoff(
    rig: Rig, start_receiver: StartReceiver, configure: Callable[..., dict[str, str]]
) -> None:
    """Through the real queue: attempt 1 fails (503), attempt 2 is queued, invisible for backoff(1) seconds."""
    name = f"cb-{uuid.uuid4().hex[:16]}"
    configure(
        storage="connection_string", RUNS_QUEUE=name, CALLBACK_ALLOWED_HOSTS="127.0.0.1", CALLBACK_SIGNING_SECRET=SECRET
    )
    settings = load_settings()
    receiver = await start_receiver(503)
    url = f"{receiver.base_url}/hook"
    queue = RunQueue(settings, None)
    try:
        result = await deliver_and_schedule_retry(
            queue, response_id="resp_cb1", url=url, attempt=1, payload=PAYLOAD, settings=settings
        )
        last = await deliver_and_schedule_retry(
            queue, response_id="resp_cb1", url=url, attempt=MAX_ATTEMPTS, payload=PAYLOAD, settings=settings
        )
    finally:
        await queue.close()
    assert (result.delivered, result.retryable, last.delivered) == (False, True, False)
    async with QueueClient.from_connection_string(
        rig.azurite.queue_connection_string, name, message_decode_policy=TextBase64DecodePolicy()
    ) as raw:
        assert (await raw.get_queue_properties()).approximate_message_count == 1  # none after the last attempt
        assert [m async for m in raw.receive_messages()] == []  # invisible for now: the backoff
        deadline = time.monotonic() + backoff(1) + 30
        visible: list[Any] = []
        while not visible and time.monotonic() < deadline:  # noqa: ASYNC110 (the service makes it visible)
            await asyncio.sleep(1)
            visible = [m async for m in raw.receive_messages()]
    assert [parse_message(str(m.content)) for m in visible] == [
        CallbackMessage(response_id="resp_cb1", callback_url=url, attempt=2)
    ]


# -- addresses callbacks never reach (DNS rebinding, metadata service) ------------------------------


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "0.0.0.0", "224.0.0.1", "fe80::1", "::", "240.0.0.1", *PLATFORM_ADDRESSES]
)
def test_listed_but_unreachable_addresses_are_refused(address: str) -> None:
    """Even an operator's list cannot open the instance metadata service or other special addresses."""
    with pytest.raises(ServiceError, match="not a public internet address") as raised:
        validate_callback_url(
            f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook", make_settings(hosts=address)
        )
    assert raised.value.code == "callback_not_allowed"


class _FakeDns(AbstractResolver):
    """Answers every name with fixed addresses (a name whose DNS was rebound)."""

    answers: ClassVar[list[str]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # aiohttp's connector passes loop=
        pass

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
            for a in self.answers
        ]

    async def close(self) -> None:
        return None


async def test_resolver_keeps_only_public_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve time: a listed name whose DNS answers platform or private addresses keeps only public ones."""
    monkeypatch.setattr(public_addresses.aiohttp, "DefaultResolver", _FakeDns)
    public = ["20.1.2.3", "2603:1030::1", "::ffff:14.1.2.3", "64:ff9b::1401:203", "2002:1401:203::1"]
    _FakeDns.answers = ["169.254.169.254", "127.0.0.1", *PLATFORM_ADDRESSES, *public]
    kept = await GuardedResolver(loopback_allowed=False).resolve("hooks.example", 443)
    assert [r["host"] for r in kept] == public  # embedded public IPv4 (14.x, 20.x) passes unwrapped
    kept = await GuardedResolver(loopback_allowed=True).resolve("localhost", 443)
    assert [r["host"] for r in kept] == ["127.0.0.1", *public]
    _FakeDns.answers = ["127.0.0.1", "::ffff:169.254.169.254", *PLATFORM_ADDRESSES]
    with pytest.raises(OSError, match="may not reach"):
        await GuardedResolver(loopback_allowed=False).resolve("hooks.example", 443)


@pytest.mark.parametrize("address", PLATFORM_ADDRESSES)
def test_platform_addresses_are_refused_with_or_without_loopback(address: str) -> None:
    assert address_refused(address, loopback_allowed=False) and address_refused(address, loopback_allowed=True)


async def test_connect_time_check_refuses_addresses_that_skip_the_resolver(rig: Rig) -> None:
    """Connect time: aiohttp never hands an IP literal to a resolver. The connector's socket factory
    refuses it anyway, and nothing reaches the listening server; the same connector with loopback
    allowed connects (so the refusal is the check, not the server)."""
    connections: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for loopback_allowed in (False, True):
            async with aiohttp.ClientSession(connector=guarded_connector(loopback_allowed=loopback_allowed)) as s:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/", allow_redirects=False):
                        pass
            assert len(connections) == (1 if loopback_allowed else 0)
    finally:
        server.close()
        await server.wait_closed()


async def test_allowed_name_rebound_to_loopback_is_never_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allowed name whose DNS now answers 127.0.0.1: the delivery refuses before any TCP connection."""
    connections: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Every resolver aiohttp could use answers 127.0.0.1 (its connector's default one too), so without
    # the guard this delivery would connect.
    monkeypatch.setattr(callbacks.aiohttp, "DefaultResolver", _FakeDns)
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", _FakeDns)
    _FakeDns.answers = ["127.0.0.1"]
    try:
        result = await deliver(f"https://allowed.com:{port}/hook", PAYLOAD, make_settings())
    finally:
        server.close()
        await server.wait_closed()
    assert (result.delivered, result.retryable) == (False, True)
    assert connections == []
