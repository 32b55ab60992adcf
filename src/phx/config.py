"""Server configuration: one TOML file loaded into frozen dataclasses.

::

    config = load_config("/etc/phx/phx.toml")     # or parse_config(text), Config.default("a.test")
    config.qs.max_messages_per_dequeue              # 500

Tables: ``[server]``, ``[federation]`` (with ``[federation.outbox]``, ``[federation.rate_limit]`` and
``[federation.resolver_overrides]``), ``[as]``, ``[ds]``, ``[qs]``. Only ``server.domain`` is required.
Every option, its default and its meaning is listed in docs/config.md and in the attribute docstrings
below; ``examples/phx.toml`` sets every one of them.

Durations are integers (seconds) or strings made of ``<number><unit>`` parts, units ``ms``, ``s``, ``m``,
``h``, ``d``, ``w`` (``"90d"``, ``"1h30m"``). Protocol lifetimes are whole seconds (``int``); network
timings (timeouts, back-off) may be fractional (``float``). Relative paths are resolved against the
directory holding the config file.

Any unknown key, wrong type or out-of-range value raises :class:`~phx.errors.ConfigError` whose message
starts with the key path, e.g. ``qs.max_messages_per_dequeue: expected a positive integer``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Self

from phx.errors import ConfigError, ValidationError
from phx.identifiers import Fqdn, Service, service_domain

__all__ = [
    "AsConfig",
    "Config",
    "DsConfig",
    "FederationConfig",
    "HostPort",
    "OutboxConfig",
    "QsConfig",
    "RateLimitConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

#: Senders stop retrying a federation message this long after creating it, and receivers remember
#: delivered message ids at least this long, so no retry can ever be processed twice.
FEDERATION_RETRY_WINDOW = DAY


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- value parsers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    base_dir: Path | None


Parser = Callable[[Any, str, _Ctx], Any]

_UNITS = {"s": 1, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds from an int/float or a string such as ``"90d"`` or ``"1h30m"``; ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if not 0 <= value < float("inf"):
            raise ValueError("not a duration")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("not a duration")
    text = value.strip()
    if not text:
        raise ValueError("not a duration")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError("not a duration")
        number, unit = float(m.group(1)), m.group(2)
        # Divide for milliseconds: 3000 * 0.001 is not exactly 3.0 in binary floating point.
        total += number / 1000 if unit == "ms" else number * _UNITS[unit]
        pos = m.end()
    return total


def _fmt_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _duration(min_s: float = 1, max_s: float | None = None) -> Parser:
    """Whole seconds (``int``) in ``[min_s, max_s]``."""

    def parse(v: Any, path: str, _: _Ctx) -> int:
        expected = 'expected a duration (seconds, or a string like "90d")'
        try:
            seconds = parse_duration(v)
        except ValueError:
            raise ConfigError(f"{path}: {expected}") from None
        if seconds != int(seconds):
            raise ConfigError(f"{path}: expected a whole number of seconds")
        _range(seconds, min_s, max_s, path, _fmt_duration)
        return int(seconds)

    return parse


def _seconds(*, zero: bool = False, max_s: float | None = None) -> Parser:
    """Fractional seconds (``float``), greater than zero (or at least zero with ``zero``), at most
    ``max_s``."""
    low = "0" if zero else "more than 0"
    bounds = f"from {low}" if max_s is None else f"from {low} to {_fmt_duration(max_s)}"
    expected = f'expected a duration {bounds} (seconds, or a string like "500ms")'

    def parse(v: Any, path: str, _: _Ctx) -> float:
        try:
            seconds = parse_duration(v)
        except ValueError:
            raise ConfigError(f"{path}: {expected}") from None
        if seconds < 0 or (seconds == 0 and not zero) or (max_s is not None and seconds > max_s):
            raise ConfigError(f"{path}: {expected}")
        return seconds

    return parse


def _range(v: float, lo: float | None, hi: float | None, path: str, fmt: Callable[[float], str]) -> None:
    if lo is not None and v < lo:
        raise ConfigError(f"{path}: must be at least {fmt(lo)}")
    if hi is not None and v > hi:
        raise ConfigError(f"{path}: must be at most {fmt(hi)}")


def _int(lo: int = 1, hi: int | None = None) -> Parser:
    if hi is not None:
        expected = f"expected an integer between {lo} and {hi}"
    else:
        expected = {1: "expected a positive integer", 0: "expected a non-negative integer"}.get(
            lo, f"expected an integer of at least {lo}"
        )

    def parse(v: Any, path: str, _: _Ctx) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ConfigError(f"{path}: {expected}")
        return v

    return parse


def _rate(v: Any, path: str, _: _Ctx) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != v or v == float("inf"):
        raise ConfigError(f"{path}: expected a non-negative number (events per second; 0 = unlimited)")
    return float(v)


def _bool(v: Any, path: str, _: _Ctx) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: expected true or false")
    return v


def _choice(*choices: str) -> Parser:
    def parse(v: Any, path: str, _: _Ctx) -> str:
        if not isinstance(v, str) or v not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(repr(c) for c in choices)}")
        return v

    return parse


def _domain_of(v: Any, path: str) -> Fqdn:
    if not isinstance(v, str):
        raise ConfigError(f"{path}: expected a domain name string")
    try:
        return Fqdn.parse(v)
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None


def _domain(v: Any, path: str, _: _Ctx) -> Fqdn:
    return _domain_of(v, path)


def _domains(v: Any, path: str, _: _Ctx) -> frozenset[Fqdn]:
    if not isinstance(v, list):
        raise ConfigError(f"{path}: expected a list of domain names")
    return frozenset(_domain_of(item, f"{path}[{i}]") for i, item in enumerate(v))


def _path(v: Any, path: str, ctx: _Ctx) -> Path:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: expected a file system path")
    p = Path(v).expanduser()
    if not p.is_absolute() and ctx.base_dir is not None:
        p = ctx.base_dir / p
    return p


def _host(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: expected a host name or IP address")
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    try:
        return Fqdn.parse(v).value
    except ValidationError:
        raise ConfigError(f"{path}: {v!r} is neither a host name nor an IP address") from None


def _listen_host(v: Any, path: str, _: _Ctx) -> str:
    return _host(v, path)


def _instance_name(v: Any, path: str, _: _Ctx) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9._:@/-]{0,200}", v):
        raise ConfigError(f"{path}: expected up to 200 of A-Z a-z 0-9 . _ : @ / -")
    return v


def _host_port(v: Any, path: str) -> HostPort:
    if not isinstance(v, str):
        raise ConfigError(f'{path}: expected "host:port"')
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", v)
    if m is None:
        raise ConfigError(f'{path}: expected "host:port" (IPv6 as "[addr]:port"), got {v!r}')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: port must be between 1 and 65535")
    return HostPort(_host(host, path), port)


def _overrides(v: Any, path: str, _: _Ctx) -> Mapping[str, HostPort]:
    if not isinstance(v, dict):
        raise ConfigError(f'{path}: expected a table of host name = "host:port"')
    out: dict[str, HostPort] = {}
    for key, target in v.items():
        if isinstance(target, dict):
            raise ConfigError(f'{path}.{key}: expected "host:port" (quote host names: "qs.b.test" = ...)')
        name = _domain_of(key, f"{path}.{key}").value
        if name in out:
            raise ConfigError(f"{path}.{key}: duplicate host name {name}")
        out[name] = _host_port(target, f"{path}.{key}")
    return types.MappingProxyType(out)


def _services(v: Any, path: str, _: _Ctx) -> frozenset[Service]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f'{path}: expected a non-empty list drawn from "as", "ds", "qs"')
    out: set[Service] = set()
    for i, item in enumerate(v):
        try:
            s = Service(item)
        except ValueError:
            raise ConfigError(f'{path}[{i}]: expected one of "as", "ds", "qs"') from None
        if s in out:
            raise ConfigError(f"{path}[{i}]: {item!r} listed twice")
        out.add(s)
    return frozenset(out)


def _database_url(v: Any, path: str, ctx: _Ctx) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{path}: expected a URL string (sqlite://… or postgresql://…)")
    scheme, sep, rest = v.partition("://")
    scheme = scheme.lower()
    if not sep or not rest:
        raise ConfigError(f"{path}: expected sqlite://<path> or postgresql://<connection>")
    if scheme == "sqlite":
        if rest == ":memory:" or rest.startswith("/"):
            return f"sqlite://{rest}"
        return f"sqlite://{_path(rest, path, ctx)}"
    if scheme in ("postgresql", "postgres"):
        return v
    raise ConfigError(f"{path}: unsupported database {scheme!r} (use sqlite:// or postgresql://)")


def _opt(default: Any, parse: Parser) -> Any:
    if isinstance(default, dict):
        frozen = types.MappingProxyType(default)
        return field(default_factory=lambda: frozen, metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


def _required(parse: Parser) -> Any:
    return field(metadata={"parse": parse})


def _section(cls: type[Any]) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


# --- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: identity, listening socket, TLS, storage, which services run."""

    domain: Fqdn = _required(_domain)
    """Home domain (required). Appears in user ids; services are reached at as./ds./qs.<domain>."""
    listen_host: str = _opt("127.0.0.1", _listen_host)
    """Address to bind. Default ``127.0.0.1``."""
    listen_port: int = _opt(8443, _int(0, 65535))
    """TCP port to bind; 0 lets the OS choose. Default ``8443``."""
    tls_cert: Path | None = _opt(None, _path)
    """PEM certificate chain for the service host names. Required unless ``plain_http``."""
    tls_key: Path | None = _opt(None, _path)
    """PEM private key of ``tls_cert``. Required together with ``tls_cert``."""
    plain_http: bool = _opt(False, _bool)
    """Serve plain HTTP (behind a TLS-terminating proxy, or local development). Default false."""
    data_dir: Path = _opt(Path("data"), _path)
    """Directory for state files (the default SQLite database). Default ``data``."""
    database_url: str = _opt("", _database_url)
    """``sqlite://<path>`` or ``postgresql://…``. Default ``sqlite://<data_dir>/phx.sqlite3``."""
    services: frozenset[Service] = _opt(frozenset(Service), _services)
    """Services this process runs: any of ``as``, ``ds``, ``qs``. Default all three."""
    max_request_size: int = _opt(1 << 20, _int(1024))
    """Largest accepted request body in bytes (larger: 413). Default 1048576 (1 MiB)."""
    max_clock_skew: int = _opt(5 * MINUTE, _duration(0, HOUR))
    """Tolerance for timestamps from the future in auth tokens. Default ``5m``."""
    log_level: str = _opt("info", _choice("debug", "info", "warning", "error"))
    """``debug``, ``info``, ``warning`` or ``error``. Default ``info``."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "server.tls_key" if self.tls_key is None else "server.tls_cert"
            raise ConfigError(f"{missing}: tls_cert and tls_key must be set together")
        if self.tls_cert is None and not self.plain_http:
            raise ConfigError(
                "server.tls_cert: TLS is required (set tls_cert and tls_key), unless plain_http = true"
            )
        if self.tls_cert is not None and self.plain_http:
            raise ConfigError("server.plain_http: cannot be combined with tls_cert/tls_key")
        try:
            service_domain(self.domain, Service.AS)
        except ValidationError:
            raise ConfigError(
                "server.domain: too long to prefix with a service label (as./ds./qs.)"
            ) from None
        if not self.services:
            raise ConfigError("server.services: at least one service must run")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite://{self.data_dir / 'phx.sqlite3'}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class OutboxConfig:
    """``[federation.outbox]``: retrying deliveries to other homeservers."""

    backoff_base: float = _opt(1.0, _seconds())
    """First retry delay; doubles per attempt (with jitter). Default ``1s``."""
    backoff_max: float = _opt(600.0, _seconds())
    """Ceiling of the retry delay. Default ``10m``."""
    batch_size: int = _opt(100, _int(1, 10_000))
    """Messages taken from the outbox per delivery round. Default 100."""
    linger: float = _opt(0.02, _seconds(zero=True, max_s=1))
    """After a batch that was not full, wait this long before the next one to the same destination, so
    that a steady trickle travels in fuller batches (fewer requests and transactions on both sides). A
    full batch is followed at once. ``0`` disables it. Default ``20ms``."""
    max_age: int = _opt(FEDERATION_RETRY_WINDOW, _duration(MINUTE, FEDERATION_RETRY_WINDOW))
    """Give up on (and drop) a message this long after it was queued; at most ``24h``. Default ``24h``."""

    def __post_init__(self) -> None:
        if self.backoff_max < self.backoff_base:
            raise ConfigError("federation.outbox.backoff_max: must be at least backoff_base")


@dataclass(frozen=True)
class RateLimitConfig:
    """``[federation.rate_limit]``: token buckets for inbound federation traffic (0 = unlimited), kept in
    the database so that every instance of the homeserver shares them."""

    per_domain_rate: float = _opt(50.0, _rate)
    """Sustained requests per second accepted from one source homeserver. Default 50."""
    per_domain_burst: int = _opt(200, _int())
    """Bucket size per source homeserver. Default 200."""
    per_queue_rate: float = _opt(5.0, _rate)
    """Sustained messages per second into one client queue config, and into one queue, from remote
    homeservers. Default 5."""
    per_queue_burst: int = _opt(50, _int())
    """Bucket size per queue config and per queue. Default 50."""


@dataclass(frozen=True)
class FederationConfig:
    """``[federation]``: who we federate with and how we talk to them."""

    policy: str = _opt("open", _choice("open", "allowlist"))
    """``open`` (everyone except ``blocklist``) or ``allowlist`` (only ``allowlist``). Default ``open``."""
    blocklist: frozenset[Fqdn] = _opt(frozenset(), _domains)
    """Home domains refused under ``policy = "open"``. Default empty."""
    allowlist: frozenset[Fqdn] = _opt(frozenset(), _domains)
    """Home domains accepted under ``policy = "allowlist"``. Default empty (no federation)."""
    resolver_overrides: Mapping[str, HostPort] = _opt({}, _overrides)
    """Host name → ``"host:port"`` to connect to instead of DNS/443 (tests, split horizons)."""
    ca_file: Path | None = _opt(None, _path)
    """PEM bundle of CAs trusted for peers' TLS; unset = the system trust store."""
    connect_timeout: float = _opt(5.0, _seconds())
    """TCP+TLS connect timeout to a peer. Default ``5s``."""
    request_timeout: float = _opt(30.0, _seconds())
    """Whole-request timeout to a peer. Default ``30s``."""
    key_cache_ttl: int = _opt(HOUR, _duration(0, 7 * DAY))
    """How long fetched peer keys (AS credentials, QS verifying keys) are cached. Default ``1h``."""
    dedup_retention: int = _opt(2 * DAY, _duration(FEDERATION_RETRY_WINDOW))
    """How long delivered message ids are remembered to drop retries; at least ``24h``. Default ``48h``."""
    instance_name: str = _opt("", _instance_name)
    """Name this instance holds sending leases under, the same across its restarts and unique among the
    live instances sharing a PostgreSQL database (e.g. the host name). A restarted instance then resumes
    its deliveries at once instead of waiting for its old leases to lapse. Default empty: a new random
    name per process. Not needed on SQLite (one instance; leases are cleared at start)."""
    outbox: OutboxConfig = _section(OutboxConfig)
    rate_limit: RateLimitConfig = _section(RateLimitConfig)

    def __post_init__(self) -> None:
        if self.policy == "allowlist" and self.blocklist:
            raise ConfigError('federation.blocklist: only used with policy = "open"')
        if self.policy == "open" and self.allowlist:
            raise ConfigError('federation.allowlist: only used with policy = "allowlist"')

    def permits(self, domain: Fqdn) -> bool:
        """Whether federation with ``domain`` is allowed by policy (the home domain is checked by
        :meth:`Config.federates_with`)."""
        if self.policy == "allowlist":
            return domain in self.allowlist
        return domain not in self.blocklist


@dataclass(frozen=True)
class AsConfig:
    """``[as]``: Authentication Service limits (book: authentication_service.md, "Configuration")."""

    token_allowance: int = _opt(1000, _int())
    """Privacy Pass tokens a client may obtain per ``token_time_frame``. Default 1000."""
    token_time_frame: int = _opt(DAY, _duration(MINUTE))
    """Anonymous token time frame after which allowances refill. Default ``1d``."""
    domain_token_allowance: int = _opt(100_000, _int(0))
    """Tokens all clients of one federated homeserver may obtain per time frame once the homeserver is
    established (see ``new_domain_token_allowance``); 0 = unlimited. Default 100000."""
    new_domain_token_allowance: int = _opt(1000, _int())
    """Per-frame allowance of a federated homeserver when its first client asks for tokens; it doubles
    every ``domain_token_allowance_doubling`` up to ``domain_token_allowance`` (book: keep the limit for new
    domains low and only increase it slowly). A homeserver none of whose clients asked for tokens for
    ``max_client_record_age`` is new again. Default 1000."""
    domain_token_allowance_doubling: int = _opt(7 * DAY, _duration(MINUTE))
    """How long a federated homeserver's allowance takes to double. Default ``7d``."""
    max_tokens_per_request: int = _opt(100, _int(1, 10_000))
    """Largest token batch one request may ask for. Default 100."""
    max_client_record_age: int = _opt(90 * DAY, _duration(DAY))
    """An AS client entry inactive this long is deleted. Default ``90d``."""
    max_messages_per_dequeue: int = _opt(500, _int())
    """Most direct-queue messages returned by one dequeue. Default 500."""
    max_connection_packages: int = _opt(100, _int())
    """Most connection packages stored per client or alias. Default 100."""
    opaque_state_expiry: int = _opt(5 * MINUTE, _duration(10, DAY))
    """Lifetime of ephemeral OPAQUE entries (pending registrations, 2FA logins). Default ``5m``."""
    max_auth_token_age: int = _opt(HOUR, _duration(10, DAY))
    """Maximal age of a client's signed timestamp (Client Credential auth). Default ``1h``."""
    as_credential_lifetime: int = _opt(3650 * DAY, _duration(DAY))
    """Validity of newly created AS root credentials. Default ``3650d``."""
    intermediate_credential_lifetime: int = _opt(730 * DAY, _duration(DAY))
    """Validity of newly created intermediate credentials. Default ``730d``."""
    client_credential_max_lifetime: int = _opt(365 * DAY, _duration(HOUR))
    """Longest validity the AS signs into a client credential. Default ``365d``."""

    def __post_init__(self) -> None:
        if self.intermediate_credential_lifetime > self.as_credential_lifetime:
            raise ConfigError("as.intermediate_credential_lifetime: must not exceed as_credential_lifetime")
        if self.client_credential_max_lifetime > self.intermediate_credential_lifetime:
            raise ConfigError(
                "as.client_credential_max_lifetime: must not exceed intermediate_credential_lifetime"
            )


@dataclass(frozen=True)
class DsConfig:
    """``[ds]``: Delivery Service limits (book: delivery_service.md, "DS configuration options")."""

    max_auth_token_age: int = _opt(HOUR, _duration(10, DAY))
    """Maximal age of a DsAuthToken. Default ``1h``."""
    max_client_inactivity: int = _opt(90 * DAY, _duration(DAY))
    """A member that has not committed for this long is proposed for removal. Default ``90d``."""
    group_expiry: int = _opt(90 * DAY, _duration(DAY))
    """A group with no activity for this long is deleted. Default ``90d``."""
    padding_percentile: int = _opt(8, _int(1, 10))
    """Group-size padding target for encryption at rest, 1..10. Default 8."""
    key_package_max_age: int = _opt(90 * DAY, _duration(HOUR))
    """KeyPackages older than this are refused in adds. Default ``90d``."""
    group_id_reservation: int = _opt(HOUR, _duration(MINUTE, 30 * DAY))
    """How long a requested group id stays reserved for create-group. Default ``1h``."""


@dataclass(frozen=True)
class QsConfig:
    """``[qs]``: Queuing Service limits (book: queuing_service.md, "QS configuration options")."""

    max_auth_token_age: int = _opt(HOUR, _duration(10, DAY))
    """Maximal age of a QsAuthToken or InterQsAuthToken. Default ``1h``."""
    max_client_record_age: int = _opt(90 * DAY, _duration(DAY))
    """A QS client record inactive this long is deleted. Default ``90d``."""
    max_messages_per_dequeue: int = _opt(500, _int())
    """Most messages returned by one dequeue. Default 500."""
    max_client_records_per_user: int = _opt(10, _int())
    """Most client records in one QS user record. Default 10."""
    ratchet_key_rotation_interval: int = _opt(DAY, _duration(MINUTE))
    """How often fresh randomness is injected into a queue's encryption ratchet. Default ``1d``."""
    max_add_packages: int = _opt(100, _int())
    """Most AddPackages one client may publish at once. Default 100."""


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with :func:`load_config`, :func:`parse_config` or
    :meth:`default`."""

    server: ServerConfig = field(metadata={"section": ServerConfig})
    federation: FederationConfig = _section(FederationConfig)
    as_: AsConfig = _section(AsConfig)
    """The ``[as]`` table (``as`` is a Python keyword)."""
    ds: DsConfig = _section(DsConfig)
    qs: QsConfig = _section(QsConfig)

    def __post_init__(self) -> None:
        fed, home = self.federation, self.server.domain
        if home in fed.blocklist:
            raise ConfigError(f"federation.blocklist: contains the home domain {home}")
        if home in fed.allowlist:
            raise ConfigError(f"federation.allowlist: contains the home domain {home}")

    @classmethod
    def default(
        cls, domain: str | Fqdn, *, tls_cert: Path | None = None, tls_key: Path | None = None
    ) -> Self:
        """All defaults for ``domain``; without a certificate the server is set to ``plain_http``."""
        d = domain if isinstance(domain, Fqdn) else _domain_of(domain, "server.domain")
        server = ServerConfig(domain=d, tls_cert=tls_cert, tls_key=tls_key, plain_http=tls_cert is None)
        return cls(server=server)

    def federates_with(self, domain: Fqdn) -> bool:
        return domain == self.server.domain or self.federation.permits(domain)

    def check_files(self) -> None:
        """Raise ConfigError (naming the key) if a configured file does not exist (start-up check)."""
        for key, p in (
            ("server.tls_cert", self.server.tls_cert),
            ("server.tls_key", self.server.tls_key),
            ("federation.ca_file", self.federation.ca_file),
        ):
            if p is not None and not p.is_file():
                raise ConfigError(f"{key}: no such file: {p}")


# --- loading -----------------------------------------------------------------------------------------

_TOML_NAMES = {"as_": "as"}


def _build(cls: type[Any], table: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table")
    by_key = {_TOML_NAMES.get(f.name, f.name): f for f in fields(cls)}
    for key in table:
        if key not in by_key:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: unknown option")
    kwargs: dict[str, Any] = {}
    for key, f in by_key.items():
        where = f"{path}.{key}" if path else key
        if key in table:
            if "section" in f.metadata:
                kwargs[f.name] = _build(f.metadata["section"], table[key], where, ctx)
            else:
                kwargs[f.name] = f.metadata["parse"](table[key], where, ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where}: required")
    return cls(**kwargs)


def parse_config(text: str, base_dir: Path | None = None) -> Config:
    """Parse TOML text; relative paths resolve against ``base_dir`` (the working directory if None)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    return _from_table(data, base_dir)


def load_config(path: str | Path) -> Config:
    """Read and parse a config file; relative paths inside it resolve against its directory."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return _from_table(data, p.resolve().parent)


def _from_table(data: dict[str, Any], base_dir: Path | None) -> Config:
    server = data.get("server")
    if isinstance(server, dict) and "data_dir" not in server:
        # The default data directory, like any relative path, lives beside the config file.
        data = {**data, "server": {**server, "data_dir": "data"}}
    config: Config = _build(Config, data, "", _Ctx(base_dir))
    return config
