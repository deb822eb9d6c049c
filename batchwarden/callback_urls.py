"""Where callbacks may go: public http(s) addresses, plus an allowlist.

A callback URL is chosen by whoever submits a job, and the leader POSTs to
it from inside the deployment. Left unchecked, a job could make batchwarden
reach a database's admin port, a cloud metadata service (169.254.169.254)
or anything else on the private network. So a callback host must resolve
only to global addresses, unless `CALLBACK_ALLOWLIST` names the host or a
network (CIDR) holding its addresses: tests and the demo allow 127.0.0.1.

The check runs twice: when a job is created (a clear 422 for the user) and
again before every delivery, because DNS can answer differently later (DNS
rebinding). At delivery the sender connects to the address that passed the
check, not to a second lookup, so the check and the connection cannot see
different answers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from batchwarden.errors import Rejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVE_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class CallbackRefused(Rejected):
    """A callback URL that batchwarden will not call; the message says why."""


@dataclass(frozen=True)
class Destination:
    """A checked callback URL and the addresses to connect to, in order."""

    url: str
    host: str
    addresses: tuple[IPAddress, ...]


def check_syntax(url: str) -> str | None:
    """Why `url` cannot be a callback URL, or None."""
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    return None


def parse_allowlist(entries: Iterable[str]) -> tuple[str | IPNetwork, ...]:
    """Host names (lower-cased) and networks; a bare address is a /32 or /128."""
    parsed: list[str | IPNetwork] = []
    for entry in entries:
        try:
            parsed.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            parsed.append(entry.lower().rstrip("."))
    return tuple(parsed)


def is_public(address: IPAddress) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return is_public(mapped)
    return address.is_global and not address.is_multicast


class CallbackPolicy:
    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self.allowlist = parse_allowlist(allowlist)

    def allows(self, host: str, address: IPAddress) -> bool:
        if is_public(address):
            return True
        for entry in self.allowlist:
            if isinstance(entry, str):
                if entry == host.lower().rstrip("."):
                    return True
            elif address.version == entry.version and address in entry:
                return True
        return False

    async def resolve(self, url: str) -> Destination:
        """The addresses of `url`'s host, if every one of them is allowed.

        Raises `CallbackRefused` naming the URL's problem or the first
        address that is not allowed.
        """
        problem = check_syntax(url)
        if problem is not None:
            raise CallbackRefused(f"callback_url: {problem}")
        parts = urlsplit(url)
        host = parts.hostname
        addresses = await _addresses(host, parts.port or DEFAULT_PORTS[parts.scheme])
        for address in addresses:
            if not self.allows(host, address):
                raise CallbackRefused(
                    f"callback_url: {host} resolves to {address}, a private,"
                    " loopback or link-local address; list it in"
                    " BATCHWARDEN_CALLBACK_ALLOWLIST to allow it"
                )
        return Destination(url, host, tuple(addresses))


async def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        with trio.fail_after(RESOLVE_TIMEOUT_S):
            found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "no answer in time"
        problem = f"callback_url: cannot resolve {host}: {reason}"
        raise CallbackRefused(problem) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    if not addresses:
        raise CallbackRefused(f"callback_url: {host} has no address")
    return list(dict.fromkeys(addresses))
