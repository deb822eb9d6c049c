"""Settings: `BATCHWARDEN_<NAME>` environment variables, overridden by flags.

Every setting is parsed and checked once, at start-up; a bad value raises
`ConfigError` naming the variable (or flag) and the value's problem. Secret
values are kept in `Secret`, whose repr never shows them, so logging the
settings cannot leak a key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchwarden.errors import ConfigError
from batchwarden.pricing import NO_PRICES, PriceTable, parse_prices

PREFIX = "BATCHWARDEN_"
HOST_NAME = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
LOOPBACK_NAMES = ("localhost",)


class Secret:
    """A value that must not appear in logs or in printed settings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_instance_id() -> str:
    """Unique per process, never per host: two replicas on one host differ."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number of seconds above 0")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _allowlist(text: str) -> tuple[str, ...]:
    entries = _csv(text)
    for entry in entries:
        if "/" in entry:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not a network (CIDR)") from None
        elif not HOST_NAME.match(entry):
            raise ValueError(f"{entry!r} is not a host name, address or CIDR")
    return entries


def _secret_csv(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(part) for part in _csv(text))


def _database_url(text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in ("postgresql", "postgres", "sqlite"):
        raise ValueError("must start with postgresql:// or sqlite:///")
    if scheme == "sqlite" and not text.startswith("sqlite:///"):
        raise ValueError("must be sqlite:///path/to/file.db")
    return text


def _webhook_secret(text: str) -> Secret:
    if not text.startswith("whsec_") or len(text) <= len("whsec_"):
        raise ValueError("must look like whsec_<base64 key>")
    return Secret(text)


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///batchwarden.db"
    host: str = "127.0.0.1"
    port: int = 8080
    provider_url: str | None = None
    anthropic_api_key: Secret | None = None
    poll_interval: float = 30.0
    webhook_secret: Secret | None = None
    api_tokens: tuple[Secret, ...] = ()
    instance_id: str = field(default_factory=default_instance_id)
    log_format: str = "text"
    log_level: str = "info"
    batch_max_requests: int = 100_000
    batch_max_bytes: int = 256_000_000
    item_max_attempts: int = 3
    provider_queue_limit: int | None = None
    callback_allowlist: tuple[str, ...] = ()
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 1.0
    trust_window: float = 2.0
    lock_wait: float = 2.0
    lock_poll_interval: float | None = None
    keepalives_idle: int = 1
    keepalives_interval: int = 1
    keepalives_count: int = 2
    idle_session_timeout: float = 3.0
    tcp_user_timeout: float = 2.0
    provider_timeout: float = 60.0
    provider_concurrency: int = 16
    results_chunk: int = 10_000
    callback_timeout: float = 10.0
    callback_backoff: float = 1.0
    callback_max_attempts: int = 8
    max_body_bytes: int = 256_000_000
    results_retention: float = 29 * 86_400.0
    archive_margin: float = 2 * 86_400.0
    prices: PriceTable = NO_PRICES

    def __repr__(self) -> str:
        return f"Settings({self.public()!r})"

    def public(self) -> dict[str, Any]:
        """The settings as printable data: secrets masked, passwords hidden."""
        shown: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, tuple):
                value = [repr(v) if isinstance(v, Secret) else v for v in value]
            elif isinstance(value, Secret):
                value = repr(value)
            shown[spec.name] = value
        shown["database_url"] = mask_password(self.database_url)
        return shown


PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _database_url,
    "host": str.strip,
    "port": _port,
    "provider_url": _url,
    "anthropic_api_key": Secret,
    "poll_interval": _positive_float,
    "webhook_secret": _webhook_secret,
    "api_tokens": _secret_csv,
    "instance_id": str.strip,
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "batch_max_requests": _positive_int,
    "batch_max_bytes": _positive_int,
    "item_max_attempts": _positive_int,
    "provider_queue_limit": _positive_int,
    "callback_allowlist": _allowlist,
    "heartbeat_interval": _positive_float,
    "heartbeat_timeout": _positive_float,
    "trust_window": _positive_float,
    "lock_wait": _positive_float,
    "lock_poll_interval": _positive_float,
    "keepalives_idle": _positive_int,
    "keepalives_interval": _positive_int,
    "keepalives_count": _positive_int,
    "idle_session_timeout": _positive_float,
    "tcp_user_timeout": _positive_float,
    "provider_timeout": _positive_float,
    "provider_concurrency": _positive_int,
    "results_chunk": _positive_int,
    "callback_timeout": _positive_float,
    "callback_backoff": _positive_float,
    "callback_max_attempts": _positive_int,
    "max_body_bytes": _positive_int,
    "results_retention": _positive_float,
    "archive_margin": _positive_float,
    "prices": parse_prices,
}


def env_name(name: str) -> str:
    return PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the API beyond this host without bearer tokens."""
    if settings.api_tokens or _is_loopback(settings.host):
        return
    raise ConfigError(
        f"BATCHWARDEN_HOST is {settings.host!r}, reachable from other hosts, and"
        " BATCHWARDEN_API_TOKENS is empty: anyone could submit and cancel jobs."
        " Set API_TOKENS, or listen on 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Settings from the environment, then flags (which win).

    `flags` maps setting names (`poll_interval`) to the raw text given on the
    command line, or None where the flag was not given.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, parse in PARSERS.items():
        raw, source = _raw_value(name, env, flags or {})
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            shown = "***" if _is_secret(name) else repr(raw)
            raise ConfigError(f"{source} {_reason(exc)} (got {shown})") from None
    return Settings(**values)


def _raw_value(
    name: str, env: Mapping[str, str], flags: Mapping[str, str | None]
) -> tuple[str | None, str]:
    if flags.get(name) is not None:
        return flags[name], flag_name(name)
    if env.get(env_name(name)):
        return env[env_name(name)], env_name(name)
    if name == "anthropic_api_key" and env.get("ANTHROPIC_API_KEY"):
        return env["ANTHROPIC_API_KEY"], "ANTHROPIC_API_KEY"
    return None, env_name(name)


def _is_secret(name: str) -> bool:
    return name in ("anthropic_api_key", "webhook_secret", "api_tokens")


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number"
    return text
