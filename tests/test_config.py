"""Unit tests for harbor_router.config and harbor_router.cli (DESIGN §6)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import ssl
import subprocess
import sys
import types
from pathlib import Path

import pytest

from harbor_router import __version__
from harbor_router.cli import main
from harbor_router.config import (
    SCHED_POLICIES,
    SECRET_VARIABLES,
    VARIABLES,
    Address,
    Config,
    ConfigError,
    describe,
    format_duration,
    format_size,
    load_config,
    parse_address,
    parse_bool,
    parse_duration,
    parse_size,
    read_secret_file,
)

ROOT = Path(__file__).resolve().parent.parent
URL = "https://harbor.example.com"
# Distinctive, so that finding it anywhere in an output is certainly a leak.
HARBOR_SECRET = "zQ9-harbor-Pa55w0rd-7vX"
REDIS_SECRET = "rK4-redis-Pa55w0rd-2mW"


def load(**values: str) -> Config:
    return load_config({"HARBOR_URL": URL, **values})


def refused(variable: str, value: str, **others: str) -> ConfigError:
    """Load with ``variable=value`` and return the error, asserting it names ``variable``."""
    env = {"HARBOR_URL": URL, **others, variable: value}
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)
    return info.value


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return str(path)


# --- the table and the dataclass ---------------------------------------------------------------


def test_variables_cover_every_config_field_in_order() -> None:
    assert [v.field for v in VARIABLES] == [f.name for f in dataclasses.fields(Config)]
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)
    assert all(v.name == v.field.upper() for v in VARIABLES)
    assert {v.name for v in VARIABLES if v.secret} == SECRET_VARIABLES


def test_every_variable_has_a_description() -> None:
    for var in VARIABLES:
        assert var.description.strip(), var.name
        assert "\n" not in var.description, var.name


def test_defaults() -> None:
    config = load()
    assert config == Config(harbor_url=URL)
    assert config.harbor_username == "" and config.harbor_password == ""
    assert config.harbor_username_file is None and config.harbor_password_file is None
    assert config.proxy_project == "proxy"
    assert config.discovery_interval == 60
    assert config.resolver_timeout == 10
    assert config.cache_ttl == 300
    assert config.max_fanout_projects == 50
    assert config.http2_prior_knowledge is False
    assert config.rate_limit_per_ip == 0
    assert config.max_idle_conns_per_host == 512
    assert config.idle_conn_timeout == 90
    assert config.listen_addr == Address("", 8080)
    assert config.metrics_addr == Address("", 9090)
    assert config.log_level == "info"
    assert config.log_format == "pretty"
    assert config.redis_sentinels == ()
    assert config.redis_master_name == "mymaster"
    assert config.redis_password == "" and config.redis_password_file is None
    assert config.redis_db == 0
    assert config.redis_key_prefix == "hr"
    assert config.negative_cache_ttl == 30
    assert config.stale_while_revalidate == 60
    assert config.circuit_breaker_threshold == 5
    assert config.circuit_breaker_timeout == 30
    assert config.auth_mode == "header"
    assert config.auth_cache_ttl == 60
    assert config.workers == 1
    assert config.cache_max_entries == 500_000
    assert config.project_priority == ()
    assert config.trusted_proxies == ()
    assert config.manifest_max_bytes == 4 * 1024 * 1024
    assert config.max_header_bytes == 16 * 1024
    assert config.upstream_ca_file is None
    assert config.upstream_tls_verify is True
    assert config.max_headers == 100
    assert config.max_url_bytes == 8192
    assert config.header_timeout == 10
    assert config.keepalive_timeout == 75
    assert config.max_connections == 10_000
    assert config.shutdown_grace == 30


def test_config_is_frozen() -> None:
    config = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cache_ttl = 1  # type: ignore[misc]


def test_empty_value_means_unset_and_whitespace_is_trimmed() -> None:
    assert load(PROXY_PROJECT="", CACHE_TTL="", WORKERS="") == load()
    assert load(CACHE_TTL="  90s ", WORKERS=" 4\n").cache_ttl == 90
    assert load(WORKERS=" 4\n").workers == 4


def test_unrelated_variables_are_ignored() -> None:
    assert load(PATH="/usr/bin", HOME="/root", HARBOR_ROUTER_NO_EXTENSIONS="1") == load()


def test_variable_defaults_match_the_dataclass() -> None:
    shown = dict(describe(load()))
    for var in VARIABLES:
        if var.required:
            assert var.default == "(required)"
        else:
            assert var.default == shown[var.name], var.name


# --- HARBOR_URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://harbor.example.com", "https://harbor.example.com"),
        ("https://harbor.example.com/", "https://harbor.example.com"),
        ("http://harbor:8080//", "http://harbor:8080"),
        ("https://example.com/harbor/", "https://example.com/harbor"),
        ("http://10.0.0.5", "http://10.0.0.5"),
        ("http://[fd00::5]:8080", "http://[fd00::5]:8080"),
    ],
)
def test_harbor_url_accepted(value: str, expected: str) -> None:
    assert load_config({"HARBOR_URL": value}).harbor_url == expected


def test_harbor_url_error_message_format() -> None:
    error = refused("HARBOR_URL", "ftp://x")
    assert str(error) == "HARBOR_URL='ftp://x': must be an http:// or https:// URL"
    assert (error.variable, error.value) == ("HARBOR_URL", "ftp://x")
    assert error.reason == "must be an http:// or https:// URL"


@pytest.mark.parametrize(
    "value",
    [
        "ftp://x",
        "harbor.example.com",
        "https://",
        "https:///path",
        "https://harbor.example.com/?x=1",
        "https://harbor.example.com/?",
        "https://harbor.example.com/#frag",
        "https://harbor.example.com:99999",
        "https://harbor.example.com:0",
        "https://harbor.example.com:port",
        "https://harbor example.com",
    ],
)
def test_harbor_url_refused(value: str) -> None:
    refused("HARBOR_URL", value)


@pytest.mark.parametrize("value", ["", "   "])
def test_harbor_url_required(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"HARBOR_URL": value})
    assert info.value.variable == "HARBOR_URL"
    assert "must be set" in str(info.value)
    with pytest.raises(ConfigError, match="HARBOR_URL"):
        load_config({})


def test_harbor_url_with_credentials_is_refused_without_showing_them() -> None:
    error = refused("HARBOR_URL", f"https://robot:{HARBOR_SECRET}@harbor.example.com/")
    assert HARBOR_SECRET not in str(error)
    assert HARBOR_SECRET not in repr(error.value)
    assert "harbor.example.com" in str(error)
    assert "HARBOR_USERNAME" in error.reason


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("1h2m3s", 3723.0),
        ("1.5h", 5400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),
        ("300\u03bcs", 0.0003),
        ("5ns", 5e-9),
        ("2h45m", 9900.0),
        ("1m0.5s", 60.5),
        ("+10s", 10.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10", "missing unit"),
        ("1.5", "missing unit"),
        ("1m30", "missing unit"),
        ("-1s", "negative"),
        ("-0", "negative"),
        ("1x", "unknown unit"),
        ("1 s", "unknown unit"),
        ("1sec", "unknown unit"),
        ("1S", "unknown unit"),
        ("", "empty"),
        ("s", "invalid"),
        (".", "invalid"),
        ("ms10", "invalid"),
        ("1e3s", "unknown unit"),
        ("9999999999h", "out of range"),
    ],
)
def test_parse_duration_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (90, "1m30s"),
        (0.25, "250ms"),
        (3600, "1h"),
        (3723, "1h2m3s"),
        (60, "1m"),
        (1.5, "1.5s"),
        (0.0003, "300us"),
        (1.5e-6, "1.5us"),
        (5e-9, "5ns"),
        (0.0015, "1.5ms"),
        (3601, "1h1s"),
        (86400, "24h"),
        (-2, "-2s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.1, 1.25, 59.999, 61, 7322.5, 1e-6, 123456.789])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


DURATION_VARIABLES = [
    ("DISCOVERY_INTERVAL", "discovery_interval", False),
    ("RESOLVER_TIMEOUT", "resolver_timeout", False),
    ("CACHE_TTL", "cache_ttl", False),
    ("IDLE_CONN_TIMEOUT", "idle_conn_timeout", False),
    ("CIRCUIT_BREAKER_TIMEOUT", "circuit_breaker_timeout", False),
    ("NEGATIVE_CACHE_TTL", "negative_cache_ttl", True),
    ("STALE_WHILE_REVALIDATE", "stale_while_revalidate", True),
    ("HEADER_TIMEOUT", "header_timeout", False),
    ("KEEPALIVE_TIMEOUT", "keepalive_timeout", False),
    ("CLIENT_SEND_TIMEOUT", "client_send_timeout", False),
    ("SHUTDOWN_GRACE", "shutdown_grace", True),
]


@pytest.mark.parametrize(("variable", "attribute", "zero_ok"), DURATION_VARIABLES)
def test_duration_variables(variable: str, attribute: str, zero_ok: bool) -> None:
    assert getattr(load(**{variable: "1m30s"}), attribute) == 90
    assert getattr(load(**{variable: "250ms"}), attribute) == 0.25
    for bad in ("10", "-1s", "1x", "ten seconds"):
        error = refused(variable, bad)
        assert error.value == bad
    if zero_ok:
        assert getattr(load(**{variable: "0"}), attribute) == 0
        assert getattr(load(**{variable: "0s"}), attribute) == 0
    else:
        assert "longer than 0" in refused(variable, "0").reason
        refused(variable, "0s")


def test_duration_error_names_variable_and_reason() -> None:
    error = refused("RESOLVER_TIMEOUT", "10")
    assert str(error).startswith("RESOLVER_TIMEOUT='10': missing unit")


# --- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4194304", 4194304),
        ("4MiB", 4 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1MB", 1_000_000),
        ("1kb", 1000),
        ("2GiB", 2 * 1024**3),
        ("1.5KiB", 1536),
        ("100B", 100),
        ("16 KiB", 16384),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("4 parsecs", "unknown size unit"),
        ("4M", "unknown size unit"),
        ("1.3B", "whole number of bytes"),
        ("-1", "must be a size"),
        ("", "must be a size"),
        ("MiB", "must be a size"),
        ("1e6", "must be a size"),
    ],
)
def test_parse_size_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(4194304, "4MiB"), (16384, "16KiB"), (1_000_000, "1000000"), (3 * 1024**3, "3GiB"), (0, "0")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_size_variables() -> None:
    assert load(MANIFEST_MAX_BYTES="1MB").manifest_max_bytes == 1_000_000
    assert load(MANIFEST_MAX_BYTES="8388608").manifest_max_bytes == 8 * 1024 * 1024
    assert load(MAX_HEADER_BYTES="32KiB").max_header_bytes == 32 * 1024
    assert load(MAX_HEADER_BYTES="1024").max_header_bytes == 1024
    assert "at least" in refused("MAX_HEADER_BYTES", "1023").reason
    assert "at least" in refused("MANIFEST_MAX_BYTES", "0").reason
    refused("MANIFEST_MAX_BYTES", "lots")
    refused("MAX_HEADER_BYTES", "16KB of headers")
    assert load(MAX_URL_BYTES="4KiB").max_url_bytes == 4096
    assert load(MAX_URL_BYTES="256").max_url_bytes == 256
    assert "at least" in refused("MAX_URL_BYTES", "255").reason


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":8080", Address("", 8080)),
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("0.0.0.0:80", Address("0.0.0.0", 80)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[::]:9090", Address("::", 9090)),
        ("[fe80::1%eth0]:8080", Address("fe80::1%eth0", 8080)),
        ("localhost:9090", Address("localhost", 9090)),
        ("router.internal.example:65535", Address("router.internal.example", 65535)),
        ("host:1", Address("host", 1)),
    ],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8080", "missing port"),
        ("localhost", "missing port"),
        (":0", "between 1 and 65535"),
        (":65536", "between 1 and 65535"),
        (":http", "between 1 and 65535"),
        (":", "between 1 and 65535"),
        ("::1:8080", "brackets"),
        ("[::1]", "missing port"),
        ("[::1]8080", "expected ':port'"),
        ("[::1:8080", "missing ']'"),
        ("[not-v6]:8080", "not a valid IPv6"),
        ("[127.0.0.1]:8080", "not a valid IPv6"),
        ("256.1.1.1:8080", "not a valid IPv4"),
        ("bad_host:8080", "not a valid host name"),
        ("-bad:8080", "not a valid host name"),
    ],
)
def test_parse_address_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_address(text)


def test_address_str() -> None:
    assert str(Address("", 8080)) == ":8080"
    assert str(Address("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(Address("::1", 8080)) == "[::1]:8080"
    for text in (":8080", "[::1]:9", "localhost:9090"):
        assert str(parse_address(text)) == text


def test_address_default_port_and_required_host() -> None:
    assert parse_address("sentinel", default_port=26379) == Address("sentinel", 26379)
    assert parse_address("[::1]", default_port=26379) == Address("::1", 26379)
    with pytest.raises(ValueError, match="host is required"):
        parse_address(":26379", require_host=True)


def test_listen_and_metrics_addresses() -> None:
    config = load(LISTEN_ADDR="127.0.0.1:5000", METRICS_ADDR="[::1]:5001")
    assert config.listen_addr == Address("127.0.0.1", 5000)
    assert config.metrics_addr == Address("::1", 5001)
    assert refused("LISTEN_ADDR", "5000").value == "5000"
    refused("METRICS_ADDR", ":0")
    refused("METRICS_ADDR", "::1:9090")


@pytest.mark.parametrize(
    ("listen", "metrics"),
    [(":8080", ":8080"), (":7000", "127.0.0.1:7000"), ("0.0.0.0:7000", "[::1]:7000")],
)
def test_listen_and_metrics_must_not_clash(listen: str, metrics: str) -> None:
    error = refused("METRICS_ADDR", metrics, LISTEN_ADDR=listen)
    assert "LISTEN_ADDR" in error.reason


def test_same_port_on_different_hosts_is_fine() -> None:
    config = load(LISTEN_ADDR="127.0.0.1:7000", METRICS_ADDR="127.0.0.2:7000")
    assert config.listen_addr.port == config.metrics_addr.port == 7000


# --- booleans, choices, integers, numbers -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
        ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
    ],
)  # fmt: skip
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value
    assert load(UPSTREAM_TLS_VERIFY=text).upstream_tls_verify is value


@pytest.mark.parametrize("text", ["maybe", "2", "y", "t", "enabled"])
def test_bool_refused(text: str) -> None:
    error = refused("UPSTREAM_TLS_VERIFY", text)
    assert "boolean" in error.reason


@pytest.mark.parametrize("text", ["true", "1", "YES", "on"])
def test_http2_prior_knowledge_true_is_refused(text: str) -> None:
    error = refused("HTTP2_PRIOR_KNOWLEDGE", text)
    assert error.reason == "HTTP/2 prior knowledge to Harbor is not implemented yet"


def test_http2_prior_knowledge_false_is_accepted() -> None:
    assert load(HTTP2_PRIOR_KNOWLEDGE="false").http2_prior_knowledge is False
    assert load(HTTP2_PRIOR_KNOWLEDGE="0").http2_prior_knowledge is False
    assert "boolean" in refused("HTTP2_PRIOR_KNOWLEDGE", "sometimes").reason


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", "debug"), ("INFO", "info"), ("warning", "warning"), ("WARN", "warning"),
     ("Error", "error")],
)  # fmt: skip
def test_log_level(text: str, level: str) -> None:
    assert load(LOG_LEVEL=text).log_level == level


@pytest.mark.parametrize("text", ["trace", "critical", "verbose", "warn ing"])
def test_log_level_refused(text: str) -> None:
    assert "debug, info, warning, error" in refused("LOG_LEVEL", text).reason


def test_log_format() -> None:
    assert load(LOG_FORMAT="json").log_format == "json"
    assert load(LOG_FORMAT="JSON").log_format == "json"
    assert load(LOG_FORMAT="pretty").log_format == "pretty"
    assert "pretty, json" in refused("LOG_FORMAT", "xml").reason


def test_sched_policy() -> None:
    assert load().sched_policy == "inherit"
    assert load(SCHED_POLICY="batch").sched_policy == "batch"
    assert load(SCHED_POLICY="Other").sched_policy == "other"
    assert load(SCHED_POLICY="inherit").sched_policy == "inherit"
    for text in ("fifo", "rr", "idle", "deadline", "normal"):  # real-time and idle: never
        assert "inherit, other, batch" in refused("SCHED_POLICY", text).reason


def test_sched_policy_table_names_real_policies() -> None:
    for text in ("inherit", "other", "batch"):
        assert load(SCHED_POLICY=text).sched_policy == text
    assert set(SCHED_POLICIES) == {"inherit", "other", "batch"}
    if hasattr(os, "SCHED_BATCH"):
        assert all(name is None or hasattr(os, name) for name in SCHED_POLICIES.values())


def test_auth_mode() -> None:
    assert load(AUTH_MODE="none").auth_mode == "none"
    assert load(AUTH_MODE="HEADER").auth_mode == "header"
    assert "none, header" in refused("AUTH_MODE", "basic").reason


@pytest.mark.parametrize("text", ["harbor", "HARBOR"])
def test_auth_mode_harbor(text: str) -> None:
    config = load(AUTH_MODE=text)
    assert config.auth_mode == "harbor"
    assert config.auth_cache_ttl == 60


def test_auth_cache_ttl() -> None:
    assert load(AUTH_CACHE_TTL="5s").auth_cache_ttl == 5
    assert load(AUTH_CACHE_TTL="0").auth_cache_ttl == 0
    assert "unit" in refused("AUTH_CACHE_TTL", "60").reason
    assert "negative" in refused("AUTH_CACHE_TTL", "-1s").reason


INT_VARIABLES = [
    ("MAX_FANOUT_PROJECTS", "max_fanout_projects", 1),
    ("MAX_IDLE_CONNS_PER_HOST", "max_idle_conns_per_host", 1),
    ("CIRCUIT_BREAKER_THRESHOLD", "circuit_breaker_threshold", 1),
    ("WORKERS", "workers", 1),
    ("CACHE_MAX_ENTRIES", "cache_max_entries", 1),
    ("REDIS_DB", "redis_db", 0),
    ("MAX_HEADERS", "max_headers", 1),
    ("MAX_CONNECTIONS", "max_connections", 1),
]


@pytest.mark.parametrize(("variable", "attribute", "minimum"), INT_VARIABLES)
def test_integer_variables(variable: str, attribute: str, minimum: int) -> None:
    assert getattr(load(**{variable: "7"}), attribute) == 7
    assert getattr(load(**{variable: str(minimum)}), attribute) == minimum
    for junk in ("seven", "1.5", "1e3", "0x10", "1_000", "7 8", "inf"):
        assert "whole number" in refused(variable, junk).reason, junk
    assert f"at least {minimum}" in refused(variable, str(minimum - 1)).reason


@pytest.mark.parametrize(("text", "rate"), [("0", 0.0), ("2.5", 2.5), ("100", 100.0), (".5", 0.5)])
def test_rate_limit_per_ip(text: str, rate: float) -> None:
    assert load(RATE_LIMIT_PER_IP=text).rate_limit_per_ip == rate


@pytest.mark.parametrize("text", ["-1", "inf", "nan", "1e3", "fast", "1,5"])
def test_rate_limit_per_ip_refused(text: str) -> None:
    refused("RATE_LIMIT_PER_IP", text)


# --- names and lists ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["proxy", "proxy-cache", "a.b_c", "p1", "x" * 255])
def test_proxy_project_accepted(text: str) -> None:
    assert load(PROXY_PROJECT=text).proxy_project == text


@pytest.mark.parametrize("text", ["Proxy", "a/b", "-a", "a-", "a--b", "a b", "_a", "x" * 256])
def test_proxy_project_refused(text: str) -> None:
    assert "lowercase" in refused("PROXY_PROJECT", text).reason


def test_project_priority() -> None:
    config = load(PROJECT_PRIORITY=" dockerhub, ,ghcr,quay-io ,")
    assert config.project_priority == ("dockerhub", "ghcr", "quay-io")
    assert load(PROJECT_PRIORITY=" , ").project_priority == ()
    assert "twice" in refused("PROJECT_PRIORITY", "ghcr,dockerhub,ghcr").reason
    assert "'Ghcr'" in refused("PROJECT_PRIORITY", "dockerhub,Ghcr").reason


def test_trusted_proxies_are_normalised() -> None:
    config = load(TRUSTED_PROXIES="10.0.0.1, 10.0.0.0/8,192.168.1.7/24, ,::1, fd00::/8")
    assert config.trusted_proxies == (
        "10.0.0.1/32",
        "10.0.0.0/8",
        "192.168.1.0/24",
        "::1/128",
        "fd00::/8",
    )


@pytest.mark.parametrize("text", ["10.0.0.300", "10.0.0.0/33", "proxy.example", "10.0.0.1,x"])
def test_trusted_proxies_refused(text: str) -> None:
    assert "CIDR" in refused("TRUSTED_PROXIES", text).reason


def test_redis_sentinels() -> None:
    config = load(REDIS_SENTINELS="s1, s2:26380,[::1]:5000, ,[fd00::1],10.0.0.9")
    assert config.redis_sentinels == (
        Address("s1", 26379),
        Address("s2", 26380),
        Address("::1", 5000),
        Address("fd00::1", 26379),
        Address("10.0.0.9", 26379),
    )
    assert load(REDIS_SENTINELS=",").redis_sentinels == ()


@pytest.mark.parametrize("text", [":26379", "s1:0", "s1:abc", "s1,::1:26379", "bad_host"])
def test_redis_sentinels_refused(text: str) -> None:
    refused("REDIS_SENTINELS", text)


def test_redis_names() -> None:
    config = load(REDIS_MASTER_NAME="primary", REDIS_KEY_PREFIX="prod:hr", REDIS_DB="3")
    assert (config.redis_master_name, config.redis_key_prefix, config.redis_db) == (
        "primary",
        "prod:hr",
        3,
    )
    assert "spaces" in refused("REDIS_KEY_PREFIX", "with space").reason
    assert "spaces" in refused("REDIS_MASTER_NAME", "my master").reason
    assert "at least 0" in refused("REDIS_DB", "-1").reason


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    """A PEM CA certificate: made with openssl if present, else the system bundle."""
    openssl = shutil.which("openssl")
    if openssl is not None:
        cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=harbor-router test CA", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return str(cert)
    system = ssl.get_default_verify_paths().cafile
    if system is None or not os.path.isfile(system):
        pytest.skip("neither openssl nor a system CA bundle is available")
    return system


def test_upstream_ca_file(ca_file: str) -> None:
    config = load(UPSTREAM_CA_FILE=ca_file, UPSTREAM_TLS_VERIFY="yes")
    assert config.upstream_ca_file == ca_file
    assert config.upstream_tls_verify is True


def test_upstream_ca_file_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    error = refused("UPSTREAM_CA_FILE", missing)
    assert error.value == missing and "no such file" in error.reason
    assert "no such file" in refused("UPSTREAM_CA_FILE", str(tmp_path)).reason


def test_upstream_ca_file_must_be_pem(tmp_path: Path) -> None:
    junk = write(tmp_path / "junk.pem", "this is not a certificate\n")
    assert "PEM" in refused("UPSTREAM_CA_FILE", junk).reason


def test_upstream_ca_file_needs_https(ca_file: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"HARBOR_URL": "http://harbor:8080", "UPSTREAM_CA_FILE": ca_file})
    assert info.value.variable == "UPSTREAM_CA_FILE"
    assert "https://" in info.value.reason


def test_upstream_tls_verify_off() -> None:
    assert load(UPSTREAM_TLS_VERIFY="false").upstream_tls_verify is False


# --- credentials and *_FILE ---------------------------------------------------------------------


def test_plain_credentials() -> None:
    config = load(HARBOR_USERNAME="robot$router", HARBOR_PASSWORD=HARBOR_SECRET)
    assert config.harbor_username == "robot$router"
    assert config.harbor_password == HARBOR_SECRET


def test_plain_password_is_taken_verbatim() -> None:
    config = load(HARBOR_USERNAME="robot", HARBOR_PASSWORD=f" {HARBOR_SECRET} ")
    assert config.harbor_password == f" {HARBOR_SECRET} "


def test_file_variants_win_over_plain(tmp_path: Path) -> None:
    user_file = write(tmp_path / "user", "robot$from-file\n")
    password_file = write(tmp_path / "password", HARBOR_SECRET + "\r\n")
    redis_file = write(tmp_path / "redis", REDIS_SECRET + "\n\n")
    config = load(
        HARBOR_USERNAME="robot$plain",
        HARBOR_PASSWORD="plain-password",
        HARBOR_USERNAME_FILE=user_file,
        HARBOR_PASSWORD_FILE=password_file,
        REDIS_PASSWORD="plain-redis",
        REDIS_PASSWORD_FILE=redis_file,
    )
    assert config.harbor_username == "robot$from-file"
    assert config.harbor_password == HARBOR_SECRET
    assert config.redis_password == REDIS_SECRET
    # The paths are kept so that credentials can be re-read when the files change.
    assert config.harbor_username_file == user_file
    assert config.harbor_password_file == password_file
    assert config.redis_password_file == redis_file


def test_file_keeps_inner_whitespace(tmp_path: Path) -> None:
    password_file = write(tmp_path / "password", " two words \n")
    config = load(HARBOR_USERNAME="robot", HARBOR_PASSWORD_FILE=password_file)
    assert config.harbor_password == " two words "


@pytest.mark.parametrize(
    "variable", ["HARBOR_USERNAME_FILE", "HARBOR_PASSWORD_FILE", "REDIS_PASSWORD_FILE"]
)
def test_missing_file_names_the_file_variable(tmp_path: Path, variable: str) -> None:
    missing = str(tmp_path / "missing")
    error = refused(variable, missing, HARBOR_USERNAME="robot", HARBOR_PASSWORD="pw")
    assert error.value == missing
    assert missing in str(error)
    assert "cannot read file" in error.reason


def test_unreadable_directory_as_file(tmp_path: Path) -> None:
    error = refused("HARBOR_PASSWORD_FILE", str(tmp_path), HARBOR_USERNAME="robot")
    assert "cannot read file" in error.reason


def test_empty_and_binary_files_are_refused(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", "\n")
    assert "empty" in refused("HARBOR_PASSWORD_FILE", empty, HARBOR_USERNAME="robot").reason
    binary = write(tmp_path / "binary", b"\xff\xfe" + HARBOR_SECRET.encode())
    error = refused("HARBOR_PASSWORD_FILE", binary, HARBOR_USERNAME="robot")
    assert "UTF-8" in error.reason
    assert HARBOR_SECRET not in str(error)


def test_read_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s", "abc\n")
    assert read_secret_file("HARBOR_PASSWORD_FILE", path) == "abc"
    path_changed = write(tmp_path / "s", "def\n")
    assert read_secret_file("HARBOR_PASSWORD_FILE", path_changed) == "def"
    with pytest.raises(ConfigError) as info:
        read_secret_file("REDIS_PASSWORD_FILE", str(tmp_path / "gone"))
    assert info.value.variable == "REDIS_PASSWORD_FILE"


def test_username_must_not_contain_colon(tmp_path: Path) -> None:
    refused("HARBOR_USERNAME", "robot:x", HARBOR_PASSWORD="pw")
    refused("HARBOR_USERNAME", "robot\x01", HARBOR_PASSWORD="pw")
    user_file = write(tmp_path / "user", "robot:x\n")
    error = refused("HARBOR_USERNAME_FILE", user_file, HARBOR_PASSWORD="pw")
    assert "':'" in error.reason


def test_username_without_password_is_refused() -> None:
    error = refused("HARBOR_PASSWORD", "", HARBOR_USERNAME="robot")
    assert "HARBOR_PASSWORD_FILE" in error.reason


def test_password_without_username_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load(HARBOR_PASSWORD=HARBOR_SECRET)
    assert info.value.variable == "HARBOR_USERNAME"
    assert HARBOR_SECRET not in str(info.value)
    assert HARBOR_SECRET not in repr(info.value.args)


def test_anonymous_access_is_allowed() -> None:
    config = load()
    assert (config.harbor_username, config.harbor_password) == ("", "")


# --- secrets never shown ------------------------------------------------------------------------


def test_config_error_masks_secret_values() -> None:
    for variable in SECRET_VARIABLES:
        error = ConfigError(variable, HARBOR_SECRET, "some reason")
        assert HARBOR_SECRET not in str(error)
        assert HARBOR_SECRET not in repr(error)
        assert error.value == "****"
        assert str(error) == f"{variable}=****: some reason"


def test_config_error_pickles() -> None:
    error = ConfigError("CACHE_TTL", "10", "missing unit")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.variable, copy.value, copy.reason) == ("CACHE_TTL", "10", "missing unit")
    assert str(copy) == str(error)


def test_secrets_absent_from_repr_and_describe(tmp_path: Path) -> None:
    redis_file = write(tmp_path / "redis", REDIS_SECRET + "\n")
    config = load(
        HARBOR_USERNAME="robot", HARBOR_PASSWORD=HARBOR_SECRET, REDIS_PASSWORD_FILE=redis_file
    )
    assert config.harbor_password == HARBOR_SECRET and config.redis_password == REDIS_SECRET
    rendered = repr(config) + str(config) + repr(describe(config)) + repr(config.describe())
    assert HARBOR_SECRET not in rendered
    assert REDIS_SECRET not in rendered
    shown = dict(describe(config))
    assert shown["HARBOR_PASSWORD"] == "****"
    assert shown["REDIS_PASSWORD"] == "****"
    assert shown["REDIS_PASSWORD_FILE"] == redis_file


def test_errors_after_secrets_do_not_leak_them(tmp_path: Path) -> None:
    password_file = write(tmp_path / "pw", HARBOR_SECRET)
    env = {
        "HARBOR_URL": URL,
        "HARBOR_USERNAME": "robot",
        "HARBOR_PASSWORD": HARBOR_SECRET,
        "HARBOR_PASSWORD_FILE": password_file,
        "REDIS_PASSWORD": REDIS_SECRET,
    }
    for variable, bad in [("CACHE_TTL", "10"), ("METRICS_ADDR", ":8080"), ("WORKERS", "0")]:
        with pytest.raises(ConfigError) as info:
            load_config({**env, variable: bad})
        assert info.value.variable == variable
        text = str(info.value) + repr(info.value) + repr(info.value.__dict__)
        assert HARBOR_SECRET not in text and REDIS_SECRET not in text


# --- describe -----------------------------------------------------------------------------------


def test_describe_order_and_shapes() -> None:
    config = load(
        CACHE_TTL="90s",
        RESOLVER_TIMEOUT="250ms",
        DISCOVERY_INTERVAL="1h",
        LISTEN_ADDR="[::1]:8443",
        REDIS_SENTINELS="s1,s2:26380",
        PROJECT_PRIORITY="dockerhub,ghcr",
        MAX_HEADER_BYTES="32768",
        RATE_LIMIT_PER_IP="2.5",
    )
    rows = config.describe()
    assert rows == describe(config)
    assert [name for name, _ in rows] == [v.name for v in VARIABLES]
    shown = dict(rows)
    assert shown["HARBOR_URL"] == URL
    assert shown["CACHE_TTL"] == "1m30s"
    assert shown["RESOLVER_TIMEOUT"] == "250ms"
    assert shown["DISCOVERY_INTERVAL"] == "1h"
    assert shown["LISTEN_ADDR"] == "[::1]:8443"
    assert shown["METRICS_ADDR"] == ":9090"
    assert shown["REDIS_SENTINELS"] == "s1:26379,s2:26380"
    assert shown["PROJECT_PRIORITY"] == "dockerhub,ghcr"
    assert shown["MAX_HEADER_BYTES"] == "32KiB"
    assert shown["RATE_LIMIT_PER_IP"] == "2.5"
    assert shown["HARBOR_PASSWORD"] == "(unset)"
    assert shown["HARBOR_PASSWORD_FILE"] == "(unset)"
    assert shown["UPSTREAM_TLS_VERIFY"] == "true"


def test_describe_round_trips(tmp_path: Path) -> None:
    user_file = write(tmp_path / "user", "robot\n")
    password_file = write(tmp_path / "password", HARBOR_SECRET + "\n")
    env = {
        "HARBOR_URL": "http://harbor.local:8080/prefix",
        "HARBOR_USERNAME_FILE": user_file,
        "HARBOR_PASSWORD_FILE": password_file,
        "PROXY_PROJECT": "pull",
        "DISCOVERY_INTERVAL": "2m30s",
        "RESOLVER_TIMEOUT": "1.5s",
        "CACHE_TTL": "1h",
        "MAX_FANOUT_PROJECTS": "7",
        "RATE_LIMIT_PER_IP": "12.25",
        "MAX_IDLE_CONNS_PER_HOST": "64",
        "IDLE_CONN_TIMEOUT": "45s",
        "LISTEN_ADDR": "127.0.0.1:5000",
        "METRICS_ADDR": "[::1]:5001",
        "LOG_LEVEL": "warn",
        "LOG_FORMAT": "json",
        "REDIS_SENTINELS": "a:1,[::1]:2",
        "REDIS_MASTER_NAME": "m",
        "REDIS_DB": "2",
        "REDIS_KEY_PREFIX": "x",
        "NEGATIVE_CACHE_TTL": "0",
        "STALE_WHILE_REVALIDATE": "300ms",
        "CIRCUIT_BREAKER_THRESHOLD": "3",
        "CIRCUIT_BREAKER_TIMEOUT": "10s",
        "AUTH_MODE": "harbor",
        "AUTH_CACHE_TTL": "15s",
        "WORKERS": "4",
        "CACHE_MAX_ENTRIES": "1000",
        "PROJECT_PRIORITY": "a,b",
        "TRUSTED_PROXIES": "10.0.0.0/8",
        "MANIFEST_MAX_BYTES": "1MB",
        "MAX_HEADER_BYTES": "8KiB",
        "UPSTREAM_TLS_VERIFY": "off",
    }
    config = load_config(env)
    again = {
        name: shown
        for name, shown in describe(config)
        if shown != "(unset)" and name not in SECRET_VARIABLES
    }
    assert load_config(again) == config
    assert again["LOG_LEVEL"] == "warning"


# --- docs ---------------------------------------------------------------------------------------


def test_docs_list_every_variable_with_its_default() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", docs, re.MULTILINE)
    }
    assert set(rows) == {v.name for v in VARIABLES}
    for var in VARIABLES:
        assert rows[var.name] == var.default, var.name


def test_docs_check_config_example_matches_the_table() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = docs.split("```console\n", 1)[1].split("```", 1)[0]
    printed = [
        line.split("=", 1)[0] for line in block.splitlines() if re.match(r"[A-Z0-9_]+=", line)
    ]
    assert printed == [v.name for v in VARIABLES]


# --- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """os.environ without any of our variables; returns monkeypatch for setenv."""
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    return monkeypatch


def test_cli_check_config(environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    environ.setenv("HARBOR_URL", URL + "/")
    environ.setenv("HARBOR_USERNAME", "robot")
    environ.setenv("HARBOR_PASSWORD", HARBOR_SECRET)
    environ.setenv("CACHE_TTL", "90s")
    assert main(["--check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [v.name for v in VARIABLES]
    assert f"HARBOR_URL={URL}" in lines
    assert "HARBOR_USERNAME=robot" in lines
    assert "HARBOR_PASSWORD=****" in lines
    assert "CACHE_TTL=1m30s" in lines
    assert "REDIS_PASSWORD=(unset)" in lines
    assert HARBOR_SECRET not in out


def test_cli_check_config_error(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("HARBOR_URL", URL)
    environ.setenv("HARBOR_PASSWORD", HARBOR_SECRET)
    environ.setenv("HARBOR_USERNAME", "robot")
    environ.setenv("RESOLVER_TIMEOUT", "10")
    assert main(["--check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("harbor-router: configuration error: RESOLVER_TIMEOUT='10': ")
    assert HARBOR_SECRET not in err


def test_cli_missing_harbor_url(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check-config"]) == 2
    assert "configuration error: HARBOR_URL" in capsys.readouterr().err


def test_cli_explicit_environ_beats_os_environ(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check-config"], environ={"HARBOR_URL": "http://other:81"}) == 0
    assert "HARBOR_URL=http://other:81" in capsys.readouterr().out.splitlines()


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"harbor-router {__version__}"


def test_cli_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--check-config" in capsys.readouterr().out


def test_cli_runs_the_server_with_the_config(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Config] = []

    def run(config: Config) -> int:
        seen.append(config)
        return 7

    fake = types.ModuleType("harbor_router.server")
    fake.run = run  # type: ignore[attr-defined]
    environ.setitem(sys.modules, "harbor_router.server", fake)
    environ.setenv("HARBOR_URL", URL)
    environ.setenv("WORKERS", "3")
    assert main([]) == 7
    assert len(seen) == 1 and seen[0].workers == 3


def test_cli_bad_config_does_not_start_the_server(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(config: Config) -> int:  # pragma: no cover - must not be called
        raise AssertionError("server started despite a bad configuration")

    fake = types.ModuleType("harbor_router.server")
    fake.run = run  # type: ignore[attr-defined]
    environ.setitem(sys.modules, "harbor_router.server", fake)
    environ.setenv("HARBOR_URL", URL)
    environ.setenv("AUTH_MODE", "basic")
    assert main([]) == 2
    assert "AUTH_MODE" in capsys.readouterr().err


def test_python_m_harbor_router_check_config() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HARBOR_URL": URL,
        "HARBOR_USERNAME": "robot",
        "HARBOR_PASSWORD": HARBOR_SECRET,
    }
    ok = subprocess.run(
        [sys.executable, "-m", "harbor_router", "--check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"HARBOR_URL={URL}" in ok.stdout.splitlines()
    assert HARBOR_SECRET not in ok.stdout + ok.stderr

    bad = subprocess.run(
        [sys.executable, "-m", "harbor_router", "--check-config"],
        env={**env, "WORKERS": "many"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "configuration error: WORKERS='many'" in bad.stderr
    assert HARBOR_SECRET not in bad.stdout + bad.stderr
