"""Token issuance across homeservers, through the production wiring (``phx.server.wiring``) over HTTPS:
a remote AS authenticates clients of another homeserver by fetching that homeserver's AS credentials,
limits issuance per origin domain, and a DS accepts only tokens of its own AS — and from clients of other
homeservers (federated-class tokens) everything but group creation."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from phx.cli.dev_setup import write_dev_setup
from phx.client import PhxClient
from phx.client.demo import free_ports, local_homeservers
from phx.delivery.messages import DsRequest
from phx.errors import PhxError
from phx.identifiers import Fqdn
from phx.server.wiring import build_services

A, B = Fqdn("a.test"), Fqdn("b.test")
DOMAIN_ALLOWANCE = 60  # tokens all clients of one other homeserver may get from as.b.test per frame


async def test_remote_token_issuance_per_domain_limit_and_foreign_tokens(tmp_path: Path) -> None:
    setup = write_dev_setup(tmp_path / "dev", ["a.test", "b.test"], ports=free_ports(2))
    b_config = setup.configs["b.test"]
    b_config.write_text(b_config.read_text() + f"\n[as]\ndomain_token_allowance = {DOMAIN_ALLOWANCE}\n")
    hosts = {f"{s}.{d}": f"127.0.0.1:{port}" for d, port in setup.ports.items() for s in ("as", "ds", "qs")}
    async with local_homeservers(list(setup.configs.values()), build_services):
        opened: list[PhxClient] = []

        async def user(address: str) -> PhxClient:
            c = PhxClient.open(tmp_path / address, ca_file=setup.ca_file, hosts=hosts)
            opened.append(c)
            await c.register(address, b"password of " + address.encode())
            return c

        try:
            alice, bob, carol = (
                await user("alice@a.test"),
                await user("bob@a.test"),
                await user("carol@b.test"),
            )
            batch = alice.session.tokens.batch
            # Clients of a.test obtain tokens of b.test's AS (their credentials checked against as.a.test's
            # published credentials) until their homeserver's allowance is spent — shared by all of them.
            await alice.session.tokens.refill(B)
            await bob.session.tokens.refill(B)
            assert 2 * batch <= DOMAIN_ALLOWANCE < 3 * batch
            for c in (alice, bob):
                with pytest.raises(PhxError) as refused:
                    await c.session.tokens.refill(B)
                assert refused.value.code == "rate_limited"
            # b.test's own clients are not affected by a.test's allowance.
            await carol.session.tokens.refill(B)
            await carol.session.tokens.refill(B)
            await carol.session.tokens.refill(B)

            # A DS accepts only tokens of its own AS: a.test's token at ds.b.test is refused. b.test's token
            # in alice's hands is of the federated class: it is valid, but requesting a group id (like
            # creating a group) is only open to b.test's own clients, such as carol.
            foreign = await alice.session.tokens.take(A)
            federated = await alice.session.tokens.take(B)
            own = await carol.session.tokens.take(B)
            verify = ssl.create_default_context(cafile=str(setup.ca_file))
            async with httpx.AsyncClient(verify=verify) as http:
                url = f"https://127.0.0.1:{setup.ports['b.test']}/ds/v1/request_group_id"
                headers = {"host": "ds.b.test"}
                ext = {"sni_hostname": "ds.b.test"}
                body = DsRequest.unsigned(privacy_pass_token=foreign).encode()
                r = await http.post(url, content=body, headers=headers, extensions=ext)
                assert (r.status_code, r.json()["error"]) == (401, "bad_token")
                body = DsRequest.unsigned(privacy_pass_token=federated).encode()
                r = await http.post(url, content=body, headers=headers, extensions=ext)
                assert (r.status_code, r.json()["error"]) == (403, "local_clients_only")
                body = DsRequest.unsigned(privacy_pass_token=own).encode()
                r = await http.post(url, content=body, headers=headers, extensions=ext)
                assert r.status_code == 200
        finally:
            for c in opened:
                await c.aclose()
