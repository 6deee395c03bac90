"""Configuration: the environment, parsed once into a frozen :class:`Config` (DESIGN §6).

Theory of operation: :data:`VARIABLES` is the single table of every environment variable the
router understands — its name, its one-line meaning, the parser that turns the text into the
field value and the formatter that shows the value back. :func:`load_config` walks that table,
then runs a few cross-variable checks (``*_FILE`` precedence, credential pairs, address clashes)
that cannot be decided one variable at a time. ``--check-config`` and ``docs/configuration.md``
are both derived from the same table, so the code and the docs cannot drift apart.

A bad value is a startup error that names the variable (:class:`ConfigError`), never a silent
default. Secrets (:data:`SECRET_VARIABLES` and the contents of their ``*_FILE`` files) never
appear in an error message, in ``repr(config)`` or in :meth:`Config.describe`.

Nothing else in the package reads ``os.environ``: callers pass the mapping in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "SECRET_VARIABLES",
    "VARIABLES",
    "Address",
    "Config",
    "ConfigError",
    "Kind",
    "Variable",
    "describe",
    "format_duration",
    "format_size",
    "load_config",
    "parse_address",
    "parse_bool",
    "parse_duration",
    "parse_size",
    "read_secret_file",
]

MASK = "****"
UNSET = "(unset)"

#: Variables whose values are never shown (the contents of their ``*_FILE`` files neither).
SECRET_VARIABLES = frozenset({"HARBOR_PASSWORD", "REDIS_PASSWORD"})


class ConfigError(Exception):
    """A configuration value that cannot be used; names the variable, the value and why.

    The value of a secret variable is replaced by ``****`` before it is stored, so neither the
    message nor the attributes can leak it.
    """

    def __init__(self, variable: str, value: str, reason: str) -> None:
        if variable in SECRET_VARIABLES and value:
            value = MASK
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        if self.value == "":
            return f"{self.variable}: {self.reason}"
        if self.value == MASK:
            return f"{self.variable}={MASK}: {self.reason}"
        return f"{self.variable}={self.value!r}: {self.reason}"

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        return (type(self), (self.variable, self.value, self.reason))


# ---------------------------------------------------------------------------------------------
# Durations (Go's time.ParseDuration syntax) and sizes


_NS_PER_UNIT: Mapping[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ MICRO SIGN, as Go accepts
    "\u03bcs": 1_000,  # μ GREEK SMALL LETTER MU, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([^0-9.]*)")
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration range
_DURATION_HINT = "use a Go-style duration such as 10s, 1m30s, 250ms or 1h"


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``10s``, ``1m30s``, ``250ms``, ``1.5h``, ``0``) into seconds.

    Raises :class:`ValueError` with a reason: bare numbers other than ``0`` (the unit is
    required), unknown units, negative values and empty text are refused.
    """
    s = text.strip()
    if s.startswith("+"):
        s = s[1:]
    if s.startswith("-"):
        raise ValueError("must not be negative")
    if s == "":
        raise ValueError(f"empty duration; {_DURATION_HINT}")
    if s == "0":
        return 0.0
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            raise ValueError(f"invalid duration; {_DURATION_HINT}")
        number, unit = match.groups()
        if unit == "":
            raise ValueError(f"missing unit after {number!r}; {_DURATION_HINT}")
        if unit not in _NS_PER_UNIT:
            raise ValueError(f"unknown unit {unit!r} (units: ns, us, ms, s, m, h)")
        total += Decimal(number) * _NS_PER_UNIT[unit]
        pos = match.end()
    if total > _MAX_DURATION_NS:
        raise ValueError("duration out of range")
    return float(total / 1_000_000_000)


def _decimal_text(numerator: int, denominator: int) -> str:
    whole, rest = divmod(numerator, denominator)
    if rest == 0:
        return str(whole)
    digits = len(str(denominator)) - 1
    return f"{whole}.{str(rest).rjust(digits, '0').rstrip('0')}"


def format_duration(seconds: float) -> str:
    """Show seconds Go-style and compactly: ``1m30s``, ``250ms``, ``1h``, ``1.5s``, ``0s``.

    The result always parses back with :func:`parse_duration` (microseconds are written ``us``).
    """
    ns = int((Decimal(repr(float(seconds))) * 1_000_000_000).to_integral_value())
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_decimal_text(ns, 1_000)}us"
    if ns < 1_000_000_000:
        return f"{sign}{_decimal_text(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, _NS_PER_UNIT["h"])
    minutes, ns = divmod(ns, _NS_PER_UNIT["m"])
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if ns:
        parts.append(f"{_decimal_text(ns, 1_000_000_000)}s")
    return sign + "".join(parts)


_BYTES_PER_UNIT: Mapping[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_TEXT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")


def parse_size(text: str) -> int:
    """Parse a byte count: ``4194304``, ``4MiB``, ``512KiB``, ``1MB``, ``1.5KiB`` (units B, KB,
    MB, GB in powers of 1000; KiB, MiB, GiB in powers of 1024; case-insensitive)."""
    match = _SIZE_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError("must be a size such as 4194304, 4MiB, 512KiB or 1MB")
    number, unit = match.groups()
    multiplier = _BYTES_PER_UNIT.get(unit.lower())
    if multiplier is None:
        raise ValueError(f"unknown size unit {unit!r} (units: B, KB, MB, GB, KiB, MiB, GiB)")
    size = Decimal(number) * multiplier
    if size != size.to_integral_value():
        raise ValueError("must be a whole number of bytes")
    return int(size)


def format_size(size: int) -> str:
    """Show a byte count in the largest binary unit that divides it exactly (``4MiB``)."""
    for unit, multiplier in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return str(size)


# ---------------------------------------------------------------------------------------------
# Addresses


class Address(NamedTuple):
    """A ``host:port`` pair; host ``""`` means every interface. ``str()`` gives ``[::1]:8080``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


DEFAULT_LISTEN_ADDR = Address("", 8080)
DEFAULT_METRICS_ADDR = Address("", 9090)

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} must be a number between 1 and 65535")
    return int(text)


def _check_host(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name or IP address")


def parse_address(
    text: str, *, default_port: int | None = None, require_host: bool = False
) -> Address:
    """Parse ``:8080``, ``127.0.0.1:8080``, ``[::1]:8080`` or ``localhost:9090``.

    An empty host means every interface (refused with ``require_host``). Without a port, the
    text is refused unless ``default_port`` is given. IPv6 addresses need brackets.
    """
    text = text.strip()
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError("expected ':port' after the IPv6 address")
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets, e.g. [::1]:8080")
    elif ":" in text:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    if port_text is not None:
        port = _parse_port(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError("missing port, e.g. :8080 or 127.0.0.1:8080")
    if host == "" and require_host:
        raise ValueError("a host is required, e.g. redis-sentinel:26379")
    if host and not text.startswith("["):
        _check_host(host)
    return Address(host, port)


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _addresses_clash(a: Address, b: Address) -> bool:
    return a.port == b.port and (
        a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS
    )


# ---------------------------------------------------------------------------------------------
# Per-field parsers (each raises ValueError with a reason; the loader adds the variable name)

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")  # one Harbor project name / path component
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off``, case-insensitive."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be a boolean: true/false, 1/0, yes/no or on/off")


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise ValueError("must be a whole number")
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _rate(text: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise ValueError("must be a non-negative number (requests per second; 0 turns it off)")
    return float(text)


def _duration(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if value == 0 and not allow_zero:
            raise ValueError("must be longer than 0")
        return value

    return parse


def _size(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        if value < minimum:
            raise ValueError(f"must be at least {format_size(minimum)} ({minimum} bytes)")
        return value

    return parse


def _choice(
    allowed: Mapping[str, str], refused: Mapping[str, str] | None = None
) -> Callable[[str], str]:
    names = ", ".join(dict.fromkeys(allowed.values()))

    def parse(text: str) -> str:
        lowered = text.lower()
        if refused and lowered in refused:
            raise ValueError(refused[lowered])
        if lowered not in allowed:
            raise ValueError(f"must be one of: {names}")
        return allowed[lowered]

    return parse


def _harbor_url(text: str) -> str:
    if any(c.isspace() for c in text):
        raise ValueError("must not contain whitespace")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials; use HARBOR_USERNAME/HARBOR_PASSWORD")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("must not have a query or fragment")
    if not parts.hostname:
        raise ValueError("must name a host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has an invalid port")
    return text.rstrip("/")


def _redact_url(text: str) -> str:
    """Drop any ``user:password@`` from a URL before it goes into an error message."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    return f"{scheme}{sep}{authority}{slash}{path}"


def _username(text: str) -> str:
    if ":" in text:
        raise ValueError("must not contain ':' (HTTP Basic authentication)")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters")
    return text


def _secret(text: str) -> str:
    return text


def _path(text: str) -> str:
    return text


def _project(text: str) -> str:
    if not _NAME.fullmatch(text) or len(text) > 255:
        raise ValueError(
            "must be one lowercase project name: letters, digits and single '.', '_' or '-' "
            "between them"
        )
    return text


def _project_list(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            _project(item)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        if item in names:
            raise ValueError(f"{item!r} is listed twice")
        names.append(item)
    return tuple(names)


def _network_list(text: str) -> tuple[str, ...]:
    networks: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _listen_address(text: str) -> Address:
    return parse_address(text)


def _sentinels(text: str) -> tuple[Address, ...]:
    addresses: list[Address] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            addresses.append(parse_address(item, default_port=26379, require_host=True))
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return tuple(addresses)


def _token(text: str) -> str:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain spaces or control characters")
    return text


def _http2(text: str) -> bool:
    if parse_bool(text):
        raise ValueError("HTTP/2 prior knowledge to Harbor is not implemented yet")
    return False


def _ca_file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError("no such file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=text)
    except ssl.SSLError:
        raise ValueError("is not a PEM CA bundle") from None
    except OSError as exc:
        raise ValueError(f"cannot read file: {exc.strerror}") from None
    return text


def read_secret_file(variable: str, path: str) -> str:
    """Read a ``*_FILE`` credential: UTF-8, trailing newlines stripped, not empty.

    Errors name ``variable`` and the path, never the contents. Used at load time and again by
    whoever re-reads credentials when the file changes (DESIGN §5).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(variable, path, f"cannot read file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(variable, path, "file is not valid UTF-8") from None
    text = text.rstrip("\r\n")
    if text == "":
        raise ConfigError(variable, path, "file is empty")
    return text


# ---------------------------------------------------------------------------------------------
# Formatters for describe()


def _show_text(value: str) -> str:
    return value if value else UNSET


def _show_optional(value: str | None) -> str:
    return value if value else UNSET


def _show_secret(value: str) -> str:
    return MASK if value else UNSET


def _show_bool(value: bool) -> str:
    return "true" if value else "false"


def _show_int(value: int) -> str:
    return str(value)


def _show_number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _show_list(value: tuple[object, ...]) -> str:
    return ",".join(str(item) for item in value) if value else UNSET


# ---------------------------------------------------------------------------------------------
# The table


class Kind(NamedTuple):
    """How one sort of value is parsed from text and shown back."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str]


_TEXT = Kind(_token, _show_text)
_SECRET = Kind(_secret, _show_secret)
_PATH = Kind(_path, _show_optional)
_INT_1 = Kind(_integer(1), _show_int)
_INT_0 = Kind(_integer(0), _show_int)
_DURATION = Kind(_duration(allow_zero=False), format_duration)
_DURATION_0 = Kind(_duration(allow_zero=True), format_duration)
_BOOL = Kind(parse_bool, _show_bool)
_ADDRESS = Kind(_listen_address, str)
_SIZE = Kind(_size(1), format_size)


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: name, kind (parser + formatter) and one-line meaning.

    The field of :class:`Config` it fills is ``name.lower()``.
    """

    name: str
    kind: Kind
    description: str
    secret: bool = False
    required: bool = False

    @property
    def field(self) -> str:
        return self.name.lower()

    @property
    def default(self) -> str:
        """The default as ``describe`` shows it (``(required)`` for HARBOR_URL)."""
        if self.required:
            return "(required)"
        return str(self.kind.show(_DEFAULTS[self.field]))


_LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
}
_AUTH_MODES = {"none": "none", "header": "header", "harbor": "harbor"}
#: ``SCHED_POLICY`` -> the ``os`` module's name of the Linux policy it sets (``inherit``: none)
SCHED_POLICIES: dict[str, str | None] = {
    "inherit": None,
    "other": "SCHED_OTHER",
    "batch": "SCHED_BATCH",
}

VARIABLES: tuple[Variable, ...] = (
    Variable("HARBOR_URL", Kind(_harbor_url, _show_text),
             "Harbor base URL: http:// or https://, optional path prefix", required=True),
    Variable("HARBOR_USERNAME", Kind(_username, _show_text),
             "robot account name for HTTP Basic to Harbor"),
    Variable("HARBOR_PASSWORD", _SECRET, "robot account secret", secret=True),
    Variable("HARBOR_USERNAME_FILE", _PATH, "file holding the username; wins over HARBOR_USERNAME"),
    Variable("HARBOR_PASSWORD_FILE", _PATH, "file holding the secret; wins over HARBOR_PASSWORD"),
    Variable("PROXY_PROJECT", Kind(_project, _show_text),
             "the virtual project clients pull from: /v2/{PROXY_PROJECT}/..."),
    Variable("DISCOVERY_INTERVAL", _DURATION, "how often proxy-cache projects are re-discovered"),
    Variable("RESOLVER_TIMEOUT", _DURATION, "time limit for each project asked in a fan-out"),
    Variable("CACHE_TTL", _DURATION, "how long a repository-to-project mapping stays fresh"),
    Variable("MAX_FANOUT_PROJECTS", _INT_1, "most projects asked at once on a cache miss"),
    Variable("HTTP2_PRIOR_KNOWLEDGE", Kind(_http2, _show_bool),
             "HTTP/2 to Harbor without negotiation (not implemented: true is refused)"),
    Variable("RATE_LIMIT_PER_IP", Kind(_rate, _show_number),
             "requests per second per client IP; 0 turns the limit off"),
    Variable("MAX_IDLE_CONNS_PER_HOST", _INT_1, "idle keep-alive connections kept to Harbor"),
    Variable("IDLE_CONN_TIMEOUT", _DURATION, "idle upstream connections are closed after this"),
    Variable("LISTEN_ADDR", _ADDRESS, "registry API address, host:port (no host = all interfaces)"),
    Variable("METRICS_ADDR", _ADDRESS, "metrics and health address, host:port"),
    Variable("LOG_LEVEL", Kind(_choice(_LOG_LEVELS), _show_text),
             "debug, info, warning (or warn) or error"),
    Variable("LOG_FORMAT", Kind(_choice({"pretty": "pretty", "json": "json"}), _show_text),
             "pretty or json"),
    Variable("REDIS_SENTINELS", Kind(_sentinels, _show_list),
             "comma-separated Sentinel host[:port] list (port 26379); unset = no Redis"),
    Variable("REDIS_MASTER_NAME", _TEXT, "Sentinel master name"),
    Variable("REDIS_PASSWORD", _SECRET, "Redis password", secret=True),
    Variable("REDIS_PASSWORD_FILE", _PATH,
             "file holding the Redis password; wins over REDIS_PASSWORD"),
    Variable("REDIS_DB", _INT_0, "Redis database number"),
    Variable("REDIS_KEY_PREFIX", _TEXT, "prefix of every Redis key"),
    Variable("REDIS_SENTINEL_AUTH", _BOOL, "send REDIS_PASSWORD to the Sentinels too"),
    Variable("REDIS_TIMEOUT", _DURATION, "time limit of each Redis call (and its socket timeout)"),
    Variable("REDIS_WARM_START_TIMEOUT", _DURATION_0,
             "how long startup waits for Redis to seed projects and hot mappings; 0 = not at all"),
    Variable("NEGATIVE_CACHE_TTL", _DURATION_0, "how long 'in no project' is remembered; 0 = off"),
    Variable("STALE_WHILE_REVALIDATE", _DURATION_0,
             "how long past CACHE_TTL a mapping is still used while it is refreshed"),
    Variable("CIRCUIT_BREAKER_THRESHOLD", _INT_1,
             "consecutive failures that open a project's breaker"),
    Variable("CIRCUIT_BREAKER_TIMEOUT", _DURATION, "how long a breaker stays open before a probe"),
    Variable("AUTH_MODE", Kind(_choice(_AUTH_MODES), _show_text),
             "client authentication: none, header or harbor"),
    Variable("AUTH_CACHE_TTL", _DURATION_0,
             "AUTH_MODE=harbor: how long Harbor's pull decisions are remembered; 0 = off"),
    Variable("WORKERS", _INT_1, "worker processes sharing the listen port (SO_REUSEPORT)"),
    Variable("SCHED_POLICY", Kind(_choice({name: name for name in SCHED_POLICIES}), _show_text),
             "Linux scheduling policy of each serving process: inherit, other or batch"),
    Variable("CACHE_MAX_ENTRIES", _INT_1, "most entries in each worker's in-process cache"),
    Variable("PROJECT_PRIORITY", Kind(_project_list, _show_list),
             "comma-separated projects asked first, in this order"),
    Variable("TRUSTED_PROXIES", Kind(_network_list, _show_list),
             "comma-separated IPs/CIDRs whose X-Forwarded-For is believed"),
    Variable("MANIFEST_MAX_BYTES", _SIZE, "largest manifest relayed"),
    Variable("MAX_HEADER_BYTES", Kind(_size(1024), format_size),
             "limit on request line + headers (431 beyond it)"),
    Variable("UPSTREAM_CA_FILE", Kind(_ca_file, _show_optional),
             "CA bundle (PEM) to verify an https HARBOR_URL"),
    Variable("UPSTREAM_TLS_VERIFY", _BOOL, "verify Harbor's TLS certificate"),
    Variable("FANOUT_GRACE", _DURATION_0,
             "how long a fan-out waits for a better answer after the first good one"),
    Variable("PASSTHROUGH_UNMATCHED", _BOOL,
             "forward /v2/ requests outside the prefix to Harbor unchanged"),
    Variable("MAX_HEADERS", _INT_1, "most header fields in one request (431 beyond it)"),
    Variable("MAX_URL_BYTES", Kind(_size(256), format_size),
             "limit on the request target (414 beyond it)"),
    Variable("HEADER_TIMEOUT", _DURATION,
             "time to receive a complete request head (408 and close after it)"),
    Variable("KEEPALIVE_TIMEOUT", _DURATION, "an idle client connection is closed after this"),
    Variable("CLIENT_SEND_TIMEOUT", _DURATION,
             "a client that takes nothing of its response for this long is cut off"),
    Variable("MAX_CONNECTIONS", _INT_1,
             "most client connections per worker (503 and close beyond it)"),
    Variable("UPSTREAM_READ_TIMEOUT", _DURATION,
             "a response body Harbor sends nothing of for this long is cut off"),
    Variable("MAX_UPSTREAM_CONNECTIONS", _INT_1,
             "most connections to Harbor open at once per worker (raw pool and fan-out each)"),
    Variable("SHUTDOWN_GRACE", _DURATION_0,
             "on SIGTERM, how long in-flight responses may take to finish"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration; built by :func:`load_config`, never mutated."""

    harbor_url: str
    harbor_username: str = ""
    harbor_password: str = field(default="", repr=False)
    harbor_username_file: str | None = None
    harbor_password_file: str | None = None
    proxy_project: str = "proxy"
    discovery_interval: float = 60.0
    resolver_timeout: float = 10.0
    cache_ttl: float = 300.0
    max_fanout_projects: int = 50
    http2_prior_knowledge: bool = False
    rate_limit_per_ip: float = 0.0
    max_idle_conns_per_host: int = 512
    idle_conn_timeout: float = 90.0
    listen_addr: Address = DEFAULT_LISTEN_ADDR
    metrics_addr: Address = DEFAULT_METRICS_ADDR
    log_level: str = "info"
    log_format: str = "pretty"
    redis_sentinels: tuple[Address, ...] = ()
    redis_master_name: str = "mymaster"
    redis_password: str = field(default="", repr=False)
    redis_password_file: str | None = None
    redis_db: int = 0
    redis_key_prefix: str = "hr"
    redis_sentinel_auth: bool = False
    redis_timeout: float = 0.1
    redis_warm_start_timeout: float = 0.5
    negative_cache_ttl: float = 30.0
    stale_while_revalidate: float = 60.0
    circuit_breaker_threshold: int = 5
    circuit_breaker_timeout: float = 30.0
    auth_mode: str = "header"
    auth_cache_ttl: float = 60.0
    workers: int = 1
    sched_policy: str = "inherit"
    cache_max_entries: int = 500_000
    project_priority: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    manifest_max_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    upstream_ca_file: str | None = None
    upstream_tls_verify: bool = True
    fanout_grace: float = 0.05
    passthrough_unmatched: bool = False
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    client_send_timeout: float = 60.0
    max_connections: int = 10_000
    upstream_read_timeout: float = 60.0
    max_upstream_connections: int = 1024
    shutdown_grace: float = 30.0

    def describe(self) -> list[tuple[str, str]]:
        """``(VARIABLE, shown value)`` for every variable, in table order, secrets masked."""
        return describe(self)


_DEFAULTS: Mapping[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING
}


def describe(config: Config) -> list[tuple[str, str]]:
    """``(VARIABLE, shown value)`` for every variable, in table order, secrets masked."""
    return [(var.name, str(var.kind.show(getattr(config, var.field)))) for var in VARIABLES]


# ---------------------------------------------------------------------------------------------
# The loader

# (file variable, field it fills, username-like validation)
_FILE_VARIABLES: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    ("HARBOR_USERNAME_FILE", "harbor_username", _username),
    ("HARBOR_PASSWORD_FILE", "harbor_password", _secret),
    ("REDIS_PASSWORD_FILE", "redis_password", _secret),
)


def _read_files(values: dict[str, Any]) -> None:
    for variable, target, validate in _FILE_VARIABLES:
        path = values.get(variable.lower())
        if path is None:
            continue
        content = read_secret_file(variable, path)
        try:
            values[target] = validate(content)
        except ValueError as exc:
            raise ConfigError(variable, path, f"file content {exc}") from None


def _check_credentials(values: dict[str, Any]) -> None:
    username = values.get("harbor_username", "")
    password = values.get("harbor_password", "")
    if username and not password:
        raise ConfigError(
            "HARBOR_PASSWORD",
            "",
            "HARBOR_USERNAME is set, so a password is needed "
            "(HARBOR_PASSWORD or HARBOR_PASSWORD_FILE)",
        )
    if password and not username:
        raise ConfigError(
            "HARBOR_USERNAME",
            "",
            "a Harbor password is set, so a username is needed "
            "(HARBOR_USERNAME or HARBOR_USERNAME_FILE)",
        )


def _check_tls(values: dict[str, Any]) -> None:
    ca_file = values.get("upstream_ca_file")
    if ca_file is not None and not values["harbor_url"].lower().startswith("https://"):
        raise ConfigError("UPSTREAM_CA_FILE", ca_file, "only used with an https:// HARBOR_URL")


def _check_addresses(values: dict[str, Any]) -> None:
    listen = values.get("listen_addr", _DEFAULTS["listen_addr"])
    metrics = values.get("metrics_addr", _DEFAULTS["metrics_addr"])
    if _addresses_clash(listen, metrics):
        raise ConfigError(
            "METRICS_ADDR", str(metrics), f"clashes with LISTEN_ADDR={listen}; use another port"
        )


_CHECKS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _read_files,
    _check_credentials,
    _check_tls,
    _check_addresses,
)


def load_config(environ: Mapping[str, str]) -> Config:
    """Build the :class:`Config` from ``environ`` (pass ``os.environ``).

    An empty value counts as unset; surrounding whitespace is ignored except in secrets.
    Raises :class:`ConfigError` naming the first variable whose value cannot be used.
    """
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = environ.get(var.name, "")
        if not var.secret:
            raw = raw.strip()
        if raw == "":
            if var.required:
                raise ConfigError(var.name, "", "must be set, e.g. https://harbor.example.com")
            continue
        try:
            values[var.field] = var.kind.parse(raw)
        except ValueError as exc:
            shown = _redact_url(raw) if var.name == "HARBOR_URL" else raw
            raise ConfigError(var.name, shown, str(exc)) from None
    for check in _CHECKS:
        check(values)
    return Config(**values)
