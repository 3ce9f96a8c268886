"""The addresses an outbound call (a callback) may reach: the public internet only.

Refused: every address that is not globally routable, after unwrapping the IPv4 address an IPv6
address carries (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16); IPv4-compatible
::a.b.c.d (deprecated) and Teredo 2001::/32 whatever they carry; and Azure's platform address
168.63.129.16, public by IANA but the host's own endpoint (WireServer: DHCP, DNS, health probes, the
VM agent) that every VM and App Service instance can reach. Loopback only where the URL named a
loopback host (local development). Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) and
carrier-grade NAT (100.64/10, which holds Alibaba's 100.100.100.200 metadata service) are refused:
a receiver must be reachable from the internet.

What decided the tables: `ipaddress.is_global` differs between patch releases (3.11.7, measured:
192.0.0.192, ::8.8.8.8 and 64:ff9b:1::1 are "global"; later releases say not), so the ranges are
listed here from IANA's IPv4 and IPv6 special-purpose registries and `is_global` is a second opinion.

The check runs where the address is known: on IP literals when the URL is checked, on every
address the resolver returns (GuardedResolver), and on the address each socket connects to
(guarded_connector's socket factory), so a name rebound after the check, or an address that skips
the resolver (aiohttp does not resolve IP literals), is still refused before any byte is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

_NOT_GLOBAL_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT): 100.100.100.200 metadata
        "127.0.0.0/8",  # loopback (allowed only for loopback hosts, before this table)
        "169.254.0.0/16",  # link-local: 169.254.169.254 instance metadata
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192: Oracle's metadata)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
# Public by IANA, but Azure's host endpoint: reachable from every instance, never a callback receiver.
_AZURE_PLATFORM_V4 = (IPv4Network("168.63.129.16/32"),)
_REFUSED_V4 = _NOT_GLOBAL_V4 + _AZURE_PLATFORM_V4
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")  # everything outside it is not globally routable
_NOT_GLOBAL_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are the IPv4 target
_IPV4_COMPATIBLE = IPv6Network("::/96")  # deprecated ::a.b.c.d (also :: and ::1)
_LOOPBACK_V4 = IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = IPv6Address("::1")


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address leads to: IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _ipv4_refused(ip: IPv4Address) -> bool:
    return any(ip in n for n in _REFUSED_V4) or not ip.is_global


def address_refused(address: str, *, loopback_allowed: bool) -> bool:
    """True unless `address` (an IP literal, IPv6 zone allowed) is a public internet address.

    Loopback (127.0.0.0/8, ::1, in these plain forms only) passes when `loopback_allowed`."""
    try:
        ip = ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if (isinstance(ip, IPv4Address) and ip in _LOOPBACK_V4) or ip == _LOOPBACK_V6:
        return not loopback_allowed
    if isinstance(ip, IPv4Address):
        return _ipv4_refused(ip)
    inner = embedded_ipv4(ip)
    if inner is not None:
        return _ipv4_refused(inner)
    if ip in _IPV4_COMPATIBLE or ip not in _GLOBAL_UNICAST_V6:
        return True
    return any(ip in n for n in _NOT_GLOBAL_V6) or not ip.is_global


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only addresses a callback may reach.

    The allow list holds names; what a name resolves to can change after the check (DNS rebinding):
    this filter runs on the addresses of this very connection attempt.
    """

    def __init__(self, *, loopback_allowed: bool) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._loopback_allowed = loopback_allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if not address_refused(r["host"], loopback_allowed=self._loopback_allowed)]
        if not kept:
            raise OSError("the callback host resolves only to addresses callbacks may not reach")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _socket_factory(loopback_allowed: bool) -> Callable[[AddrInfoType], socket.socket]:
    def create(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if address_refused(str(address[0]), loopback_allowed=loopback_allowed):
            raise OSError("refused to connect: not a public internet address")
        return socket.socket(family=family, type=type_, proto=proto)

    return create


def guarded_connector(*, loopback_allowed: bool) -> aiohttp.TCPConnector:
    """A connector that checks addresses twice: as the resolver returns them, and as each socket
    is created for one of them (also for IP literals, which aiohttp never passes to a resolver)."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(loopback_allowed=loopback_allowed),
        use_dns_cache=False,
        socket_factory=_socket_factory(loopback_allowed),
    )
