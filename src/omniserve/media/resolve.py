"""Where a media URL's host leads, and whether omniserve may go there.

Resolution is a seam (``Resolver``): the fetcher resolves a host once, checks every address with
``AddressPolicy`` and then connects only to a checked address, so DNS is never asked twice.
``StaticResolver`` is a real resolver over a fixed table, for tests and air-gapped setups.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol

from omniserve.errors import InvalidMedia

IPAddress = IPv4Address | IPv6Address

# Not the public internet, whatever the Python version's ``is_global`` says.
_BLOCKED_V4 = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata at 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_BLOCKED_V6 = tuple(
    IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF assignments: Teredo, benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local
        "ff00::/8",  # multicast
    )
)
# IPv6 forms whose last 32 bits are an IPv4 address the packets end up at.
_EMBEDS_V4 = tuple(
    IPv6Network(n)
    for n in (
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "::/96",  # IPv4-compatible (deprecated)
        "64:ff9b::/96",  # NAT64
    )
)


def unresolvable(host: str) -> InvalidMedia:
    return InvalidMedia(
        f"Failed to download multimodal content. The host {host} could not be resolved."
    )


class Resolver(Protocol):
    """Turns a host name into addresses; raises ``InvalidMedia`` when it cannot."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo`` in a worker thread)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            addresses = [ip_address(str(info[4][0])) for info in infos]
        except (OSError, ValueError) as exc:  # gaierror, and UnicodeError of IDNA names
            raise unresolvable(host) from exc
        if not addresses:
            raise unresolvable(host)
        return list(dict.fromkeys(addresses))


class StaticResolver:
    """A fixed table of names: a real resolver, the tests' seam (like httpx's ``MockTransport``).

    Unknown names fail exactly as a DNS failure does; ``lookups`` records every name asked for.
    """

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        self._table = {
            _name_key(name): [ip_address(a) for a in addresses]
            for name, addresses in mapping.items()
        }
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        addresses = self._table.get(_name_key(host))
        if not addresses:
            raise unresolvable(host)
        return list(addresses)


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, translated, compatible, 6to4, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _EMBEDS_V4):
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True only for addresses on the public internet; anything else is someone's own network."""
    if isinstance(ip, IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return is_public(embedded)
        if any(ip in net for net in _BLOCKED_V6):
            return False
    elif any(ip in net for net in _BLOCKED_V4):
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class AddressPolicy:
    """Which hosts a media URL may reach: public addresses, plus what ``allow_hosts`` lets in.

    Entries are host names (exact, or ``*.lan.example`` for any name below it) or networks and
    addresses in CIDR form. A host passes when its name is listed or every address it resolves
    to is public or inside a listed network: one bad address refuses the host.
    """

    def __init__(self, allow_hosts: Iterable[str]) -> None:
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._networks: list[IPv4Network | IPv6Network] = []
        for entry in allow_hosts:
            text = entry.strip()
            try:
                self._networks.append(ip_network(text.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _name_key(text)
            if not name or "/" in name or name == "*." or "*" in name.removeprefix("*."):
                raise ValueError(f"allow_hosts: not a host name or network: {entry!r}")
            if name.startswith("*."):
                self._suffixes.append(name[1:])
            else:
                self._names.add(name)

    def name_allowed(self, host: str) -> bool:
        name = _name_key(host)
        return name in self._names or any(name.endswith(s) for s in self._suffixes)

    def admits(self, ip: IPAddress) -> bool:
        if is_public(ip):
            return True
        forms: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
            forms.append(embedded)
        return any(form in net for form in forms for net in self._networks)

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Raise ``InvalidMedia`` naming the first address ``host`` may not lead to."""
        if self.name_allowed(host):
            return
        for ip in addresses:
            if not self.admits(ip):
                raise InvalidMedia(
                    f"Failed to download multimodal content. The host {host} resolves to {ip}, "
                    "which is not a public address."
                )


def _name_key(name: str) -> str:
    """Names compare case-insensitively and without the root's trailing dot."""
    return name.strip().lower().removesuffix(".")
