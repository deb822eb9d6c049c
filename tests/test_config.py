"""Settings: environment, flags that win, and errors that name the setting."""

from __future__ import annotations

import pytest

from batchwarden.config import Secret, Settings, check_exposure, load_settings
from batchwarden.errors import ConfigError


def test_defaults_match_the_documented_contract():
    settings = load_settings(env={})
    assert settings.database_url == "sqlite:///batchwarden.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.poll_interval == 30.0
    assert (settings.batch_max_requests, settings.batch_max_bytes) == (
        100_000,
        256_000_000,
    )
    assert settings.item_max_attempts == 3
    assert settings.provider_queue_limit is None


def test_flags_win_over_the_environment():
    env = {"BATCHWARDEN_PORT": "9000", "BATCHWARDEN_POLL_INTERVAL": "5"}
    settings = load_settings(env=env, flags={"port": "9100", "poll_interval": None})
    assert (settings.port, settings.poll_interval) == (9100, 5.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "http", "BATCHWARDEN_PORT must be a number (got 'http')"),
        ("PORT", "70000", "BATCHWARDEN_PORT must be a port number from 0 to 65535"),
        ("POLL_INTERVAL", "0", "BATCHWARDEN_POLL_INTERVAL must be a number of seconds"),
        ("LOG_FORMAT", "xml", "BATCHWARDEN_LOG_FORMAT must be one of text, json"),
        ("DATABASE_URL", "mysql://x", "BATCHWARDEN_DATABASE_URL must start with"),
        ("ITEM_MAX_ATTEMPTS", "-1", "BATCHWARDEN_ITEM_MAX_ATTEMPTS must be a whole"),
        ("CALLBACK_ALLOWLIST", "10.0.0.0/33", "BATCHWARDEN_CALLBACK_ALLOWLIST '10.0"),
        ("CALLBACK_ALLOWLIST", "a b", "BATCHWARDEN_CALLBACK_ALLOWLIST 'a b' is not"),
        ("PRICES", "{", "BATCHWARDEN_PRICES is not valid JSON"),
        ("PRICES", '{"m": {"input": 1}}', "BATCHWARDEN_PRICES m.output: missing"),
        ("PRICES", '{"m": {"input": 1, "output": -2}}', "BATCHWARDEN_PRICES m.output"),
        ("PRICES", "@/no/such/file", "BATCHWARDEN_PRICES cannot read /no/such/file"),
    ],
)
def test_a_bad_value_names_its_setting(name, value, message):
    with pytest.raises(ConfigError) as raised:
        load_settings(env={f"BATCHWARDEN_{name}": value})
    assert str(raised.value).startswith(message)


def test_a_bad_flag_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--batch-max-requests must be a number"):
        load_settings(env={}, flags={"batch_max_requests": "lots"})


def test_secrets_never_show_in_settings_or_errors():
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-very-secret",
        "BATCHWARDEN_API_TOKENS": "tok-one,tok-two",
        "BATCHWARDEN_DATABASE_URL": "postgresql://bw:hunter2@db/bw",
    }
    settings = load_settings(env=env)
    assert settings.anthropic_api_key == Secret("sk-ant-very-secret")
    assert [t.reveal() for t in settings.api_tokens] == ["tok-one", "tok-two"]
    shown = repr(settings) + repr(settings.public())
    for secret in ("sk-ant-very-secret", "tok-one", "hunter2"):
        assert secret not in shown
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"BATCHWARDEN_WEBHOOK_SECRET": "plain-secret"})
    assert "plain-secret" not in str(raised.value)


def test_instance_ids_differ_per_process_instance():
    assert Settings().instance_id != Settings().instance_id


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "::1", "[::1]", "localhost", "127.8.0.2"],
)
def test_a_loopback_replica_may_serve_without_tokens(host):
    check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "api.internal"])
def test_a_reachable_replica_without_tokens_refuses_to_start(host):
    with pytest.raises(ConfigError, match="BATCHWARDEN_API_TOKENS is empty"):
        check_exposure(Settings(host=host))
    check_exposure(Settings(host=host, api_tokens=(Secret("t"),)))
