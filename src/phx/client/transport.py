"""HTTP from the client to any homeserver's AS, DS or QS (docs/decisions.md: ``POST /<service>/v1/<op>``).

The client reaches services the way homeservers reach each other: ``as.<domain>`` etc. on port 443 over
HTTPS, verified against the system store or a CA file, with optional resolver overrides (``"as.a.test" =
"127.0.0.1:9443"``; TLS still verifies the service name). It reuses federation's
:class:`~phx.federation.discovery.PeerClient`, so the two sides share one HTTP path.

:class:`Transport` answers with the response body or raises:

* :class:`ServiceError` — the service answered with an error (status, stable ``code``, message);
* :class:`~phx.federation.discovery.PeerUnreachable` (an :class:`~phx.errors.Unavailable`) — no answer.

For tests, :class:`AsgiRouter` is an httpx transport that hands each request to an in-process app chosen
by the service host name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import httpx

from phx.config import HostPort
from phx.errors import PhxError
from phx.federation.discovery import PeerClient, Resolver, tls_context
from phx.identifiers import Fqdn, Service

__all__ = ["AsgiRouter", "ServiceError", "Transport", "parse_host_port"]


class ServiceError(PhxError):
    """An error answer from a service; ``code`` is the service's stable error code."""

    def __init__(self, host: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{host}: {message} ({code})")
        self.host = host
        self.status = status
        self.code = code
        self.message = message


def parse_host_port(text: str) -> HostPort:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f'expected "host:port", got {text!r}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return HostPort(host, int(port))


class Transport:
    """One HTTP client for every service of every homeserver the client talks to."""

    def __init__(
        self,
        overrides: Mapping[str, HostPort] | None = None,
        *,
        ca_file: Path | None = None,
        plain_http: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
    ) -> None:
        resolver = Resolver(dict(overrides or {}), plain_http=plain_http)
        if transport is None:
            verify = False if plain_http else tls_context(ca_file)
            transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
        self._peer = PeerClient(
            resolver, transport, connect_timeout=connect_timeout, request_timeout=request_timeout
        )
        self.calls = 0

    async def call(self, domain: Fqdn, service: Service, operation: str, body: bytes) -> bytes:
        self.calls += 1
        response = await self._peer.post(domain, service, operation, body)
        if response.ok:
            return response.body
        host = f"{service.value}.{domain}"
        code, message = f"http_{response.status}", response.body[:200].decode("utf-8", "replace")
        try:
            data = json.loads(response.body)
            if isinstance(data, dict):
                code = str(data.get("error", code))
                message = str(data.get("message", message))
        except ValueError:
            pass
        raise ServiceError(host, response.status, code, message)

    async def aclose(self) -> None:
        await self._peer.aclose()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsgiRouter(httpx.AsyncBaseTransport):
    """Routes each request to the in-process ASGI app registered for its host (``as.a.test`` …)."""

    def __init__(self, apps: Mapping[str, object]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}  # type: ignore[arg-type]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.headers.get("host", request.url.host).rsplit(":", 1)[0]
        transport = self._transports.get(host)
        if transport is None:
            raise httpx.ConnectError(f"no in-process app for {host}", request=request)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for t in self._transports.values():
            await t.aclose()
