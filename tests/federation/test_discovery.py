from __future__ import annotations

import ssl
import time
from email.utils import formatdate

import httpx
import pytest

from phx.config import FederationConfig, HostPort, parse_config
from phx.federation.discovery import (
    PeerClient,
    PeerResponse,
    PeerUnreachable,
    Resolver,
    parse_retry_after,
    tls_context,
)
from phx.identifiers import Fqdn, Service

B = Fqdn("b.test")


def test_services_live_at_fixed_subdomains_on_443() -> None:
    r = Resolver()
    e = r.resolve(B, Service.QS)
    assert (e.base, e.host, e.overridden) == ("https://qs.b.test", "qs.b.test", False)
    assert r.resolve(B, Service.AS).host == "as.b.test"


def test_overrides_change_the_address_not_the_name() -> None:
    config = parse_config(
        '[server]\ndomain = "a.test"\nplain_http = true\n'
        '[federation.resolver_overrides]\n"qs.b.test" = "127.0.0.1:9443"\n"ds.b.test" = "[::1]:8443"\n'
    )
    r = Resolver.from_config(config.federation)
    qs = r.resolve(B, Service.QS)
    assert (qs.base, qs.host, qs.overridden) == ("https://127.0.0.1:9443", "qs.b.test", True)
    assert r.resolve(B, Service.DS).base == "https://[::1]:8443"
    assert r.resolve(B, Service.AS).base == "https://as.b.test"


def test_tls_verification_is_always_on() -> None:
    ctx = tls_context(None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_retry_after_forms() -> None:
    now = time.time()
    assert parse_retry_after("7", now, 1.0) == 7
    assert parse_retry_after(None, now, 1.5) == 1.5
    assert parse_retry_after("soon", now, 2.0) == 2.0
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now, 1.0) <= 11
    assert parse_retry_after("999999999", now, 1.0) == 86400


async def test_client_sends_sni_and_host_of_the_name_and_maps_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/boom"):
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(429, headers={"retry-after": "3"}, json={"error": "rate_limited"})

    resolver = Resolver({"qs.b.test": HostPort("127.0.0.1", 9443)})
    client = PeerClient(resolver, httpx.MockTransport(handler))
    r = await client.post(B, Service.QS, "federated_enqueue", b"body")
    assert isinstance(r, PeerResponse) and r.status == 429
    assert r.retry_after(time.time(), 1.0) == 3 and r.error_code() == "rate_limited"
    req = seen[0]
    assert str(req.url) == "https://127.0.0.1:9443/qs/v1/federated_enqueue"
    assert req.headers["host"] == "qs.b.test" and req.extensions["sni_hostname"] == "qs.b.test"
    with pytest.raises(PeerUnreachable):
        await client.post(B, Service.QS, "boom", b"")
    await client.aclose()


def test_plain_http_only_when_configured() -> None:
    assert Resolver.from_config(FederationConfig()).scheme == "https"
