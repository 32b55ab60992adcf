"""KeyPackage publication and AddPackage retrieval — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest

from phx.config import QsConfig
from phx.errors import MlsError, NotFound, SignatureError, ValidationError
from phx.identifiers import Fqdn, QsCid
from phx.mls.key_package import create_key_package
from phx.mls.messages import Credential
from phx.queuing.messages import (
    AddPackage,
    AddPackageParams,
    AddPackageResponse,
    ClientQueueConfig,
    CreateClientRecordParams,
    CreateClientRecordResponse,
    Operation,
    PublishKeyPackagesParams,
    QsClientRequest,
    QueueConfig,
    seal_queue_config,
)
from phx.queuing.service import QsService
from phx.storage import Database

from .helpers import DOMAIN, Client, cs, make_service, register


async def fetch(service: QsService, token: bytes) -> AddPackageResponse:
    body = QsClientRequest(AddPackageParams(token).encode(), None, b"pp").encode()
    return AddPackageResponse.decode(await service.handle(Operation.GET_ADD_PACKAGES, body))


async def publish(c: Client, packages: list[AddPackage]) -> None:
    await c.call(Operation.PUBLISH_KEY_PACKAGES, PublishKeyPackagesParams(c.cid, tuple(packages)))


async def test_publish_and_fetch_consumes_ordinary_then_returns_last_resort(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    ordinary = [c.add_package() for _ in range(2)]
    last = c.add_package(last_resort=True)
    await publish(c, [*ordinary, last])

    got = [await fetch(service, c.friendship_token) for _ in range(4)]
    assert [r.add_packages for r in got] == [(ordinary[0],), (ordinary[1],), (last,), (last,)]
    for r in got:
        r.key_package_batch.verify(service.verifying_key, tuple(a.key_package for a in r.add_packages))
        assert r.key_package_batch.homeserver_domain == DOMAIN
        assert r.key_package_batch.timestamp == service.clock()
    # A batch does not verify for other KeyPackages or under another key.
    with pytest.raises(ValidationError):
        got[0].key_package_batch.verify(service.verifying_key, (last.key_package,))
    with pytest.raises(SignatureError):
        got[0].key_package_batch.verify(cs.generate_signature_key_pair()[1], (ordinary[0].key_package,))


async def test_publish_replaces_all_previous(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    await publish(c, [c.add_package(), c.add_package(last_resort=True)])
    fresh = c.add_package(last_resort=True)
    await publish(c, [fresh])
    assert (await fetch(service, c.friendship_token)).add_packages == (fresh,)
    async with db.transaction() as conn:
        assert await service.store.count_key_packages(conn, c.cid) == 1


async def test_one_add_package_per_client(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    sk, pk = cs.generate_signature_key_pair()
    resp = CreateClientRecordResponse.decode(
        await c.call(
            Operation.CREATE_CLIENT_RECORD,
            CreateClientRecordParams(c.qs_uid, pk, cs.generate_hpke_key_pair()[1]),
            as_user=True,
        )
    )
    second = replace(c, client_sk=sk, qs_cid=resp.qs_cid)
    a = c.add_package(last_resort=True)
    b = second.add_package(last_resort=True)
    await publish(c, [a])
    await publish(second, [b])
    got = await fetch(service, c.friendship_token)
    assert sorted(p.encode() for p in got.add_packages) == sorted([a.encode(), b.encode()])


async def test_publish_rejections(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    other = await register(service)

    def foreign(domain: Fqdn, cid: QsCid, key: bytes) -> ClientQueueConfig:
        return seal_queue_config(key, domain, QueueConfig(None, cid))

    cases: list[tuple[list[AddPackage], str]] = [
        ([], "at least one"),
        ([c.add_package()], "last-resort"),
        ([c.add_package(last_resort=True, config=other.queue_config())], "not the publishing client"),
        (
            [
                c.add_package(
                    last_resort=True,
                    config=foreign(Fqdn("elsewhere.test"), c.cid, service.queue_config_encryption_key),
                )
            ],
            "another homeserver",
        ),
        (
            [c.add_package(last_resort=True, config=foreign(DOMAIN, c.cid, cs.generate_hpke_key_pair()[1]))],
            "does not open",
        ),
    ]
    for packages, message in cases:
        with pytest.raises(ValidationError, match=message):
            await publish(c, packages)

    # No QueueConfig extension at all.
    bundle = create_key_package(
        cs, Credential.basic(b"x"), cs.generate_signature_key_pair()[0], now=service.clock(), last_resort=True
    )
    with pytest.raises(ValidationError, match="no QueueConfig"):
        await publish(c, [AddPackage(bundle.key_package, b"", b"")])
    # A KeyPackage whose signature does not verify.
    good = c.add_package(last_resort=True)
    forged = replace(good, key_package=replace(good.key_package, signature=bytes(64)))
    with pytest.raises(MlsError):
        await publish(c, [forged])
    # Too many.
    small = await make_service(db, config=QsConfig(max_add_packages=2))
    with pytest.raises(ValidationError, match="at most 2"):
        await small.handle(
            Operation.PUBLISH_KEY_PACKAGES,
            c.request(
                Operation.PUBLISH_KEY_PACKAGES,
                PublishKeyPackagesParams(c.cid, (good, good, good)),
            ),
        )
    # Nothing was stored by any failed attempt.
    async with db.transaction() as conn:
        assert await service.store.count_key_packages(conn, c.cid) == 0


async def test_fetch_with_unknown_token(db: Database) -> None:
    service = await make_service(db)
    await register(service)
    with pytest.raises(NotFound):
        await fetch(service, os.urandom(32))


async def test_concurrent_fetches_never_share_a_key_package(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    ordinary = [c.add_package() for _ in range(6)]
    last = c.add_package(last_resort=True)
    await publish(c, [*ordinary, last])
    results = await asyncio.gather(*(fetch(service, c.friendship_token) for _ in range(10)))
    got = [r.add_packages[0].encode() for r in results]
    handed_ordinary = [g for g in got if g != last.encode()]
    assert len(handed_ordinary) == len(set(handed_ordinary)) == 6
    assert got.count(last.encode()) == 4
