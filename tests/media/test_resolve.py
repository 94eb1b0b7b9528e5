"""Address policy and resolvers: which hosts a media URL may reach."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from omniserve.errors import InvalidMedia
from omniserve.media.resolve import (
    AddressPolicy,
    StaticResolver,
    SystemResolver,
    embedded_ipv4,
    is_public,
)

PRIVATE = [
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.5",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.0.9",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "fc00::1",
    "fd00::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",  # Teredo
    "2001:2::1",  # benchmarking
    "100::1",
    "3fff::1",
    "64:ff9b:1::a00:1",
    "::ffff:10.0.0.1",  # mapped
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0:10.0.0.1",  # translated
    "::127.0.0.1",  # compatible
    "::10.0.0.1",
    "64:ff9b::10.0.0.1",  # NAT64
    "64:ff9b::127.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
]
PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.215.14",
    "100.63.255.255",
    "100.128.0.0",
    "172.32.0.1",
    "198.20.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


@pytest.mark.parametrize("text", PRIVATE)
def test_not_public(text: str) -> None:
    assert not is_public(ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public(text: str) -> None:
    assert is_public(ip_address(text))


def test_embedded_ipv4() -> None:
    ten = IPv4Address("10.0.0.1")
    assert embedded_ipv4(IPv6Address("::ffff:10.0.0.1")) == ten
    assert embedded_ipv4(IPv6Address("2002:a00:1::")) == ten
    assert embedded_ipv4(IPv6Address("64:ff9b::a00:1")) == ten
    assert embedded_ipv4(IPv6Address("2606:4700:4700::1111")) is None


def test_policy_names_and_wildcards() -> None:
    policy = AddressPolicy(["Media.Test.", "*.lan.example"])
    assert policy.name_allowed("media.test")
    assert policy.name_allowed("MEDIA.TEST.")
    assert policy.name_allowed("cam.lan.example")
    assert policy.name_allowed("a.b.lan.example")
    assert not policy.name_allowed("lan.example")
    assert not policy.name_allowed("evil-lan.example")
    assert not policy.name_allowed("media.test.evil")
    loopback = [ip_address("127.0.0.1")]
    policy.check("media.test", loopback)
    with pytest.raises(InvalidMedia):
        policy.check("other.test", loopback)


def test_policy_networks() -> None:
    policy = AddressPolicy(["127.0.0.1", "10.1.0.0/16", "[fd00::1]"])
    assert policy.admits(ip_address("127.0.0.1"))
    assert not policy.admits(ip_address("127.0.0.2"))
    assert policy.admits(ip_address("10.1.200.3"))
    assert not policy.admits(ip_address("10.2.0.1"))
    assert policy.admits(ip_address("::ffff:10.1.0.1"))  # the same address, mapped
    assert policy.admits(ip_address("fd00::1"))
    assert policy.admits(ip_address("8.8.8.8"))
    assert not policy.admits(ip_address("::1"))


def test_every_address_is_checked() -> None:
    policy = AddressPolicy([])
    addresses = [ip_address("8.8.8.8"), ip_address("192.168.0.1")]
    with pytest.raises(InvalidMedia) as info:
        policy.check("mixed.test", addresses)
    assert info.value.message == (
        "Failed to download multimodal content. The host mixed.test resolves to 192.168.0.1, "
        "which is not a public address."
    )


@pytest.mark.parametrize("entry", ["", "*.", "a.*.example", "10.0.0.0/33", "media.test/8"])
def test_bad_allowlist_entries_fail_loudly(entry: str) -> None:
    with pytest.raises(ValueError, match="allow_hosts"):
        AddressPolicy([entry])


def test_static_resolver() -> None:
    resolver = StaticResolver({"Media.Test": ["127.0.0.1", "::1"]})
    addresses = asyncio.run(resolver.resolve("media.test.", 80))
    assert addresses == [ip_address("127.0.0.1"), ip_address("::1")]
    with pytest.raises(InvalidMedia, match=r"The host other\.test could not be resolved"):
        asyncio.run(resolver.resolve("other.test", 80))
    assert resolver.lookups == ["media.test.", "other.test"]


def test_system_resolver_reads_the_hosts_file() -> None:
    addresses = asyncio.run(SystemResolver().resolve("localhost", 80))
    assert addresses
    assert all(a.is_loopback for a in addresses)


def test_system_resolver_refuses_malformed_names_without_asking() -> None:
    with pytest.raises(InvalidMedia, match=r"The host a\.\.b could not be resolved"):
        asyncio.run(SystemResolver().resolve("a..b", 80))
