"""Profiles, connection packages (user id and alias), aliases, and the direct and alias queues."""

from __future__ import annotations

import os

import pytest

from phx.auth.client import plain_request, sign_connection_package
from phx.auth.messages import (
    AliasClientsParams,
    AliasClientsResponse,
    ConnectionPackagePayload,
    DeleteAlias,
    DequeueAliasMessagesParams,
    DequeueMessagesParams,
    DequeueMessagesResponse,
    EnqueueAliasMessageParams,
    EnqueueMessageParams,
    RegisterAlias,
    UpdateUserProfileParams,
    UploadAliasPackages,
    UploadUserIdPackages,
    UserClientsParams,
    UserClientsResponse,
    UserProfileParams,
    UserProfileResponse,
)
from phx.credentials import ExpirationData
from phx.errors import Conflict, ExpiredError, NotFound, SignatureError, ValidationError
from phx.identifiers import ClientId, Fqdn, UserId
from phx.queues import QueueItemType, QueueReader
from phx.storage import Database
from tests.auth.helpers import DAY, AliasOwner, Client, FakeClock, call, cs, make_service, short_config
from tests.auth.test_registration import add_client


async def anonymous(service_client: Client, op: str, params: object) -> bytes:
    """A call without client authentication, paying with one of ``service_client``'s tokens."""
    return await call(service_client.service, op, plain_request(params, token=service_client.token()))  # type: ignore[arg-type]


# --- profiles ----------------------------------------------------------------------------------------


async def test_profile_update_and_fetch(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register()
    bob = await Client.new(service).register()
    await alice.call("update_user_profile", UpdateUserProfileParams(b"alice's encrypted profile"))
    body = await anonymous(bob, "fetch_user_profile", UserProfileParams(alice.user_id))
    assert UserProfileResponse.decode(body).user_profile == b"alice's encrypted profile"
    with pytest.raises(ValidationError, match="larger than"):
        await alice.call("update_user_profile", UpdateUserProfileParams(b"x" * (64 * 1024 + 1)))
    with pytest.raises(NotFound):
        await anonymous(bob, "fetch_user_profile", UserProfileParams(UserId.random(service.domain)))
    with pytest.raises(NotFound, match="not a user of this homeserver"):
        await anonymous(
            bob, "fetch_user_profile", UserProfileParams(UserId.random(Fqdn("elsewhere.example")))
        )


# --- connection packages by user id ------------------------------------------------------------------


async def test_user_packages_are_consumed_except_the_last(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(packages=3)
    bob = await Client.new(service).register()
    seen = []
    for _ in range(5):
        body = await anonymous(bob, "get_user_id_connection_package", UserClientsParams(alice.user_id))
        seen.append(UserClientsResponse.decode(body).connection_package)
    assert seen[0] != seen[1] != seen[2]
    assert seen[2] == seen[3] == seen[4]  # the last one stays as a last resort
    assert all(p.client_credential == alice.cred for p in seen)


async def test_a_clients_last_resort_waits_for_other_clients_packages(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register(packages=1, login=True)
    phone = await add_client(alice, alice.password)
    await phone.fetch_tokens(1)
    await phone.call(
        "upload_user_id_connection_packages", UploadUserIdPackages((phone.package(), phone.package()))
    )
    bob = await Client.new(service).register()
    owners = []
    for _ in range(3):
        body = await anonymous(bob, "get_user_id_connection_package", UserClientsParams(alice.user_id))
        owners.append(UserClientsResponse.decode(body).connection_package.client_credential.client_id)
    # The phone's spare goes first; then each client is down to its last resort.
    assert owners[0] == phone.client_id
    assert set(owners[1:]) <= {alice.client_id, phone.client_id}


async def test_package_upload_checks(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=short_config(max_connection_packages=3))
    alice = await Client.new(service).register(packages=1)
    bob = await Client.new(service).register()
    upload = "upload_user_id_connection_packages"
    with pytest.raises(ValidationError, match="another client credential"):
        await alice.call(upload, UploadUserIdPackages((bob.package(),)))
    good = alice.package()
    forged = type(good)(good.payload, good.client_credential, bytes(64))
    with pytest.raises(SignatureError):
        await alice.call(upload, UploadUserIdPackages((forged,)))
    _, pk = cs.generate_hpke_key_pair()
    expired = sign_connection_package(
        ConnectionPackagePayload(pk, ExpirationData(clock.now - 2 * DAY, clock.now - DAY)),
        alice.cred,
        alice.signing_key,
    )
    with pytest.raises(ValidationError, match="expired"):
        await alice.call(upload, UploadUserIdPackages((expired,)))
    too_long = sign_connection_package(
        ConnectionPackagePayload(pk, ExpirationData(clock.now, clock.now + 365 * DAY)),
        alice.cred,
        alice.signing_key,
    )
    with pytest.raises(ValidationError, match="outlives"):
        await alice.call(upload, UploadUserIdPackages((too_long,)))
    await alice.call(upload, UploadUserIdPackages((alice.package(), alice.package())))
    with pytest.raises(ValidationError, match="at most 3"):
        await alice.call(upload, UploadUserIdPackages((alice.package(),)))


async def test_expired_packages_are_not_handed_out(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    alice = await Client.new(service).register(packages=0)
    bob = await Client.new(service).register()
    await alice.call(
        "upload_user_id_connection_packages", UploadUserIdPackages((alice.package(lifetime=3600),))
    )
    await anonymous(bob, "get_user_id_connection_package", UserClientsParams(alice.user_id))
    clock.now += 7200
    with pytest.raises(NotFound, match="no connection package"):
        await anonymous(bob, "get_user_id_connection_package", UserClientsParams(alice.user_id))


# --- aliases -----------------------------------------------------------------------------------------


def payload(now: int, lifetime: int = 7 * DAY) -> ConnectionPackagePayload:
    _, pk = cs.generate_hpke_key_pair()
    return ConnectionPackagePayload(pk, ExpirationData(now, now + lifetime))


async def test_alias_lifecycle(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    payer = await Client.new(service).register(tokens=20)
    owner = AliasOwner.new(service, "Zoë")
    await anonymous(payer, "register_alias", owner.register_params())
    with pytest.raises(Conflict):
        await anonymous(payer, "register_alias", AliasOwner.new(service, "Zoë").register_params())
    # Upload payloads under the alias auth key, fetch them anonymously: consumed except the last.
    upload = UploadAliasPackages(owner.alias, (payload(clock.now), payload(clock.now)))
    await call(
        service,
        "upload_alias_connection_packages",
        owner.request("upload_alias_connection_packages", upload, payer.token()),
    )
    got = [
        AliasClientsResponse.decode(
            await anonymous(payer, "get_alias_connection_package", AliasClientsParams(owner.alias))
        )
        for _ in range(3)
    ]
    assert got[0].connection_package == upload.connection_packages[0]
    assert got[1] == got[2] and got[1].connection_package == upload.connection_packages[1]
    # The alias is not linked to any user: nothing in the alias tables names one.
    async with db.transaction(readonly=True) as conn:
        row = await conn.fetchrow("SELECT * FROM as_aliases WHERE alias = $1", "Zoë")
    assert row is not None and str(payer.user_id) not in repr(dict(row))
    # Deleting needs the alias key; afterwards packages and queue are gone.
    intruder = AliasOwner.new(service, "Zoë")
    with pytest.raises(SignatureError):
        await call(
            service, "delete_alias", intruder.request("delete_alias", DeleteAlias(owner.alias), payer.token())
        )
    await call(
        service, "delete_alias", owner.request("delete_alias", DeleteAlias(owner.alias), payer.token())
    )
    with pytest.raises(NotFound):
        await anonymous(payer, "get_alias_connection_package", AliasClientsParams(owner.alias))
    with pytest.raises(NotFound):
        await anonymous(payer, "enqueue_alias_message", EnqueueAliasMessageParams(owner.alias, b"hello"))


async def test_alias_auth_rules(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock)
    payer = await Client.new(service).register(tokens=20)
    owner = AliasOwner.new(service)
    with pytest.raises(ValidationError, match="alias auth key"):
        await anonymous(
            payer, "register_alias", RegisterAlias(owner.alias, b"short", owner.queue_pk, owner.ratchet_key)
        )
    with pytest.raises(ValidationError, match="queue encryption key"):
        await anonymous(
            payer, "register_alias", RegisterAlias(owner.alias, owner.auth_pk, bytes(32), owner.ratchet_key)
        )
    await anonymous(payer, "register_alias", owner.register_params())
    upload = UploadAliasPackages(owner.alias, (payload(clock.now),))
    op = "upload_alias_connection_packages"
    stale = owner.request(op, upload, payer.token(), now=clock.now - service.config.max_auth_token_age - 1)
    with pytest.raises(ExpiredError):
        await call(service, op, stale)
    with pytest.raises(NotFound):
        other = AliasOwner.new(service)
        await call(service, op, other.request(op, UploadAliasPackages(other.alias, ()), payer.token()))
    expired = UploadAliasPackages(owner.alias, (payload(clock.now - 2 * DAY, DAY),))
    with pytest.raises(ValidationError, match="expired"):
        await call(service, op, owner.request(op, expired, payer.token()))
    # A Client Credential request is not alias auth.
    with pytest.raises(Exception, match="no client authentication|requires alias authentication"):
        await payer.call(op, upload)


# --- direct and alias queues -------------------------------------------------------------------------


async def test_direct_queue_round_trip(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=short_config(max_messages_per_dequeue=2))
    alice = await Client.new(service).register()
    bob = await Client.new(service).register(tokens=20)
    messages = [os.urandom(40) for _ in range(3)]
    for m in messages:
        await anonymous(bob, "enqueue_message", EnqueueMessageParams(alice.client_id, m))
    # The AS stores ciphertexts only.
    async with db.transaction(readonly=True) as conn:
        stored = [bytes(r[0]) for r in await conn.fetch("SELECT ciphertext FROM as_direct_queue_messages")]
    assert len(stored) == 3 and not any(m in s for m in messages for s in stored)
    # Dequeue is limited by the configured maximum; the rest is reported as remaining.
    first = DequeueMessagesResponse.decode(await alice.call("dequeue_messages", DequeueMessagesParams(0, 10)))
    assert [m.sequence_number for m in first.messages] == [0, 1] and first.remaining_messages_number == 1
    assert alice.reader is not None
    assert alice.reader.read_all(first.messages) == messages[:2]
    # Starting at 2 deletes 0 and 1.
    rest = DequeueMessagesResponse.decode(await alice.call("dequeue_messages", DequeueMessagesParams(2, 10)))
    assert alice.reader.read_all(rest.messages) == messages[2:]
    again = DequeueMessagesResponse.decode(await alice.call("dequeue_messages", DequeueMessagesParams(0, 10)))
    assert [m.sequence_number for m in again.messages] == [2]
    with pytest.raises(ValidationError, match="past the queue's end"):
        await alice.call("dequeue_messages", DequeueMessagesParams(9, 10))


async def test_direct_queue_rotates_its_ratchet(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, ratchet_rotation_interval=3600)
    alice = await Client.new(service).register()
    bob = await Client.new(service).register(tokens=20)
    await anonymous(bob, "enqueue_message", EnqueueMessageParams(alice.client_id, b"one"))
    clock.now += 3600
    await anonymous(bob, "enqueue_message", EnqueueMessageParams(alice.client_id, b"two"))
    resp = DequeueMessagesResponse.decode(await alice.call("dequeue_messages", DequeueMessagesParams(0, 10)))
    assert [m.item_type for m in resp.messages] == [
        QueueItemType.MESSAGE,
        QueueItemType.KEY_UPDATE,
        QueueItemType.MESSAGE,
    ]
    reader = QueueReader(cs, [alice.queue_sk], ratchet_key=alice.ratchet_key)
    assert reader.read_all(resp.messages) == [b"one", b"two"]
    # Without the queue private key the update cannot be followed (post-compromise security).
    thief = QueueReader(cs, [cs.generate_hpke_key_pair()[0]], ratchet_key=alice.ratchet_key)
    with pytest.raises(ValidationError):
        thief.read_all(resp.messages)


async def test_enqueue_checks(db: Database) -> None:
    service = await make_service(db)
    alice = await Client.new(service).register()
    with pytest.raises(NotFound):
        await anonymous(alice, "enqueue_message", EnqueueMessageParams(ClientId.random(alice.user_id), b"x"))
    with pytest.raises(NotFound):
        other = ClientId.random(UserId.random(Fqdn("elsewhere.example")))
        await anonymous(alice, "enqueue_message", EnqueueMessageParams(other, b"x"))
    with pytest.raises(ValidationError, match="too large"):
        await anonymous(
            alice, "enqueue_message", EnqueueMessageParams(alice.client_id, b"x" * (64 * 1024 + 1))
        )
    with pytest.raises(ValidationError, match="empty"):
        await anonymous(alice, "enqueue_message", EnqueueMessageParams(alice.client_id, b""))


async def test_alias_queue_round_trip(db: Database) -> None:
    service = await make_service(db)
    payer = await Client.new(service).register(tokens=20)
    owner = AliasOwner.new(service)
    await anonymous(payer, "register_alias", owner.register_params())
    await anonymous(payer, "enqueue_alias_message", EnqueueAliasMessageParams(owner.alias, b"let's connect"))
    op = "dequeue_alias_messages"
    params = DequeueAliasMessagesParams(owner.alias, 0, 10)
    resp = DequeueMessagesResponse.decode(await call(service, op, owner.request(op, params, payer.token())))
    reader = QueueReader(cs, [owner.queue_sk], ratchet_key=owner.ratchet_key)
    assert reader.read_all(resp.messages) == [b"let's connect"]
    with pytest.raises(SignatureError):
        intruder = AliasOwner.new(service, owner.alias.value)
        await call(service, op, intruder.request(op, params, payer.token()))


async def test_deleting_a_user_deletes_its_queue(db: Database) -> None:
    from phx.auth.messages import DeleteUserParams

    service = await make_service(db)
    alice = await Client.new(service).register(login=True)
    bob = await Client.new(service).register(tokens=20)
    await anonymous(bob, "enqueue_message", EnqueueMessageParams(alice.client_id, b"hi"))
    await alice.call("delete_user", DeleteUserParams(await alice.second_factor()))
    with pytest.raises(NotFound):
        await anonymous(bob, "enqueue_message", EnqueueMessageParams(alice.client_id, b"hi"))
    async with db.transaction(readonly=True) as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM as_direct_queue_messages") == 0
        assert (
            await conn.fetchval(
                "SELECT COUNT(*) FROM as_connection_packages WHERE user_id = $1", str(alice.user_id)
            )
            == 0
        )
