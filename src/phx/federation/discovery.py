"""Finding and talking to another homeserver's services.

Discovery is fixed by the book: the services of domain ``D`` are ``as.D``, ``ds.D`` and ``qs.D``, over
HTTPS on port 443. ``federation.resolver_overrides`` may say where a host name really is (``"qs.b.test" =
"127.0.0.1:9443"``); TLS then still verifies the *original* name, which travels as SNI and ``Host``.
There is no plaintext federation: certificates are always verified, against the system store or
``federation.ca_file``.

:class:`PeerClient` is the one place that does HTTP to peers. Its transport is an ``httpx`` transport, so
it can be real HTTPS (:func:`https_transport`), an in-process ASGI app, or a fault-injecting wrapper in
tests; everything above it (the keyring, the sender) sees only :class:`PeerResponse` or
:class:`PeerUnreachable`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from phx.config import FederationConfig, HostPort
from phx.errors import Unavailable
from phx.identifiers import Fqdn, Service, service_domain

__all__ = [
    "MAX_RESPONSE_SIZE",
    "Endpoint",
    "PeerClient",
    "PeerResponse",
    "PeerUnreachable",
    "Resolver",
    "https_transport",
    "parse_retry_after",
    "tls_context",
]

#: Largest response body read from a peer; a peer streaming more is treated as broken.
MAX_RESPONSE_SIZE = 16 << 20
OCTETS = "application/octet-stream"


class PeerUnreachable(Unavailable):
    """No answer from a peer: DNS, connect, TLS, timeout, connection reset, truncated response."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect (``base``) and which name to present and verify (``host``)."""

    base: str
    host: str

    @property
    def overridden(self) -> bool:
        return not self.base.endswith(f"//{self.host}")


class Resolver:
    """Service host names to endpoints. ``overrides`` is read at every call, so a test harness may fill
    it in after its servers have bound their ports."""

    def __init__(self, overrides: Mapping[str, HostPort] | None = None, *, plain_http: bool = False) -> None:
        self.overrides: Mapping[str, HostPort] = overrides if overrides is not None else {}
        self.scheme = "http" if plain_http else "https"

    @classmethod
    def from_config(cls, config: FederationConfig) -> Resolver:
        return cls(dict(config.resolver_overrides))

    def resolve(self, domain: Fqdn, service: Service) -> Endpoint:
        host = service_domain(domain, service).value
        target = self.overrides.get(host)
        if target is None:
            return Endpoint(f"{self.scheme}://{host}", host)
        return Endpoint(f"{self.scheme}://{target}", host)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification always on: hostname and chain, against ``ca_file`` or the system store."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_transport(config: FederationConfig, *, max_connections: int = 100) -> httpx.AsyncBaseTransport:
    verify = tls_context(config.ca_file)
    return httpx.AsyncHTTPTransport(
        verify=verify,
        trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


@dataclass(frozen=True, slots=True)
class PeerResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def retry_after(self, now: float, default: float) -> float:
        return parse_retry_after(self.headers.get("retry-after"), now, default)

    def error_code(self) -> str:
        """The ``error`` of a phx JSON error body, else ``http_<status>``."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return f"http_{self.status}"
        code = data.get("error") if isinstance(data, dict) else None
        return code if isinstance(code, str) and len(code) <= 64 else f"http_{self.status}"


def parse_retry_after(value: str | None, now: float, default: float) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``default`` when absent or
    unreadable. Capped at one day so a peer cannot park us forever."""
    if value is None:
        return default
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return default
    return min(max(seconds, 0.0), 86400.0)


class PeerClient:
    """HTTP to other homeservers: ``POST /<service>/v1/<operation>`` with octet-stream bodies."""

    def __init__(
        self,
        resolver: Resolver,
        transport: httpx.AsyncBaseTransport,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.resolver = resolver
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_config(
        cls, config: FederationConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> PeerClient:
        return cls(
            Resolver.from_config(config),
            transport if transport is not None else https_transport(config),
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
        )

    async def post(
        self, domain: Fqdn, service: Service, operation: str, body: bytes, *, timeout: float | None = None
    ) -> PeerResponse:
        endpoint = self.resolver.resolve(domain, service)
        url = f"{endpoint.base}/{service.value}/v1/{operation}"
        headers = {"content-type": OCTETS, "accept": OCTETS, "accept-encoding": "identity"}
        extensions: dict[str, object] = {}
        if endpoint.overridden:
            headers["host"] = endpoint.host
            extensions["sni_hostname"] = endpoint.host
        kwargs: dict[str, object] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        request = self._client.build_request(
            "POST",
            url,
            content=body,
            headers=headers,
            extensions=extensions,
            **kwargs,  # type: ignore[arg-type]
        )
        try:
            response = await self._client.send(request, stream=True)
            try:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_SIZE:
                        raise PeerUnreachable(f"{endpoint.host}: response larger than {MAX_RESPONSE_SIZE}")
            finally:
                await response.aclose()
        except httpx.TransportError as e:
            raise PeerUnreachable(f"{endpoint.host}: {type(e).__name__}: {e}") from e
        return PeerResponse(response.status_code, dict(response.headers), bytes(data))

    async def aclose(self) -> None:
        await self._client.aclose()
