"""Which callback URLs batchwarden calls: public addresses and the allowlist."""

from __future__ import annotations

import ipaddress

import pytest

from batchwarden.callback_urls import CallbackPolicy, CallbackRefused, check_syntax

REFUSED = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "0.0.0.0",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.1",
    "::1",
    "fe80::1",
    "fd00:ec2::254",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(address):
    policy = CallbackPolicy()
    assert not policy.allows("hooks.example.com", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::6810:84e5"])
def test_public_addresses_are_allowed(address):
    assert CallbackPolicy().allows("example.com", ipaddress.ip_address(address))


def test_the_allowlist_takes_networks_addresses_and_host_names():
    policy = CallbackPolicy(["10.1.0.0/16", "127.0.0.1", "Hooks.Internal"])
    allowed = [("a", "10.1.200.3"), ("b", "127.0.0.1"), ("hooks.internal.", "10.9.9.9")]
    for host, address in allowed:
        assert policy.allows(host, ipaddress.ip_address(address))
    assert not policy.allows("a", ipaddress.ip_address("10.2.0.1"))
    assert not policy.allows("a", ipaddress.ip_address("127.0.0.2"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "must be an http:// or https:// URL with a host"),
        ("https:///path", "must be an http:// or https:// URL with a host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://user:pw@example.com/", "must not carry a user name or password"),
    ],
)
def test_a_malformed_url_is_named(url, problem):
    assert check_syntax(url) == problem


async def test_a_host_name_is_checked_by_every_address_it_resolves_to():
    with pytest.raises(CallbackRefused, match="localhost resolves to"):
        await CallbackPolicy().resolve("http://localhost:8000/hook")
    destination = await CallbackPolicy(["localhost"]).resolve("http://localhost/h")
    assert destination.host == "localhost" and destination.addresses[0].is_loopback


async def test_an_address_in_the_url_needs_no_lookup():
    destination = await CallbackPolicy(["127.0.0.0/8"]).resolve("https://127.0.0.9/")
    assert destination.addresses == (ipaddress.ip_address("127.0.0.9"),)


async def test_a_name_that_does_not_resolve_is_refused():
    with pytest.raises(CallbackRefused, match="cannot resolve no-such-host.invalid"):
        await CallbackPolicy().resolve("http://no-such-host.invalid/hook")
