"""User and client records, blocklist, auth tokens and Privacy Pass — on SQLite and PostgreSQL."""

from __future__ import annotations

import os

import pytest

from phx.config import QsConfig
from phx.errors import (
    AuthError,
    Conflict,
    DecodeError,
    ExpiredError,
    NotFound,
    SignatureError,
    TokenError,
    ValidationError,
)
from phx.queues import QueueItemType, QueueReader
from phx.queuing.messages import (
    CreateClientRecordParams,
    CreateClientRecordResponse,
    CreateUserRecordParams,
    DeleteClientRecordParams,
    DeleteUserRecordParams,
    DequeueMessagesParams,
    Operation,
    QsClientRequest,
    QueueConfigEncryptionKeyResponse,
    UpdateClientRecordParams,
    UpdateUserRecordParams,
    UserRecordParams,
    UserRecordResponse,
)
from phx.storage import Database

from .helpers import AcceptAll, FakeClock, cs, make_service, register


async def test_create_user_record_and_read_it_back(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    resp = UserRecordResponse.decode(
        await c.call(Operation.GET_USER_RECORD, UserRecordParams(c.qs_uid), as_user=True)
    )
    assert resp.user_record_auth_key == cs.signature_public_key(c.user_sk)
    assert resp.friendship_token == c.friendship_token
    [record] = resp.client_records
    assert record.qs_cid == c.cid
    assert record.client_record_auth_key == cs.signature_public_key(c.client_sk)
    assert record.queue_encryption_key == c.queue_pk
    assert record.activity_time == service.clock()
    # The queue starts with the sealed initial ratchet key, which only the owner can open.
    [item] = await service.queue_items(c.cid)
    assert item.item_type == QueueItemType.INITIAL_KEY and item.sequence_number == 0
    reader = QueueReader(cs, [c.queue_sk])
    assert reader.read(item) is None and reader.ratchet_key is not None


async def test_create_user_record_rejects_bad_input(db: Database) -> None:
    service = await make_service(db)
    sig = cs.generate_signature_key_pair()[1]
    hpke = cs.generate_hpke_key_pair()[1]
    bad = [
        CreateUserRecordParams(sig, b"short", sig, hpke),  # friendship token too short
        CreateUserRecordParams(sig[:31], os.urandom(32), sig, hpke),
        CreateUserRecordParams(sig, os.urandom(32), sig + b"x", hpke),
        CreateUserRecordParams(sig, os.urandom(32), sig, hpke[:16]),
        CreateUserRecordParams(sig, os.urandom(32), sig, bytes(32)),  # low-order X25519 point
    ]
    for params in bad:
        with pytest.raises(ValidationError):
            await service.handle(
                Operation.CREATE_USER_RECORD, QsClientRequest(params.encode(), None, b"pp").encode()
            )
    with pytest.raises(DecodeError):
        await service.handle(Operation.CREATE_USER_RECORD, b"\x01\x02garbage")
    with pytest.raises(DecodeError):
        await service.handle(Operation.CREATE_USER_RECORD, QsClientRequest(b"\x00", None, b"pp").encode())


async def test_privacy_pass_required_except_dequeue(db: Database) -> None:
    redeemer = AcceptAll()
    service = await make_service(db, redeemer=redeemer)
    c = await register(service)
    params = UserRecordParams(c.qs_uid)
    with pytest.raises(TokenError):
        await c.call(Operation.GET_USER_RECORD, params, as_user=True, token=None)
    with pytest.raises(TokenError):
        await c.call(Operation.GET_USER_RECORD, params, as_user=True, token=b"bad")
    with pytest.raises(TokenError):
        await service.handle(Operation.QUEUE_CONFIG_ENCRYPTION_KEY, QsClientRequest(b"", None, None).encode())
    key = QueueConfigEncryptionKeyResponse.decode(
        await service.handle(
            Operation.QUEUE_CONFIG_ENCRYPTION_KEY, QsClientRequest(b"", None, b"t1").encode()
        )
    )
    assert key.encryption_key == service.queue_config_encryption_key
    # Dequeue works without a token and redeems none.
    before = len(redeemer.redeemed)
    await c.call(Operation.DEQUEUE_MESSAGES, DequeueMessagesParams(c.cid, 0, 10), token=None)
    assert len(redeemer.redeemed) == before


async def test_auth_token_checks(db: Database) -> None:
    clock = FakeClock()
    service = await make_service(db, clock, config=QsConfig(max_auth_token_age=3600))
    c = await register(service)
    other = await register(service)
    params = UserRecordParams(c.qs_uid)
    op = Operation.GET_USER_RECORD
    # No token at all.
    with pytest.raises(AuthError):
        await service.handle(op, QsClientRequest(params.encode(), None, b"pp").encode())
    # Signed by the wrong key.
    with pytest.raises(SignatureError):
        await c.call(op, params, as_user=True, key=other.user_sk)
    # The client key does not open the user record.
    with pytest.raises(SignatureError):
        await c.call(op, params, as_user=True, key=c.client_sk)
    # Too old and from the future.
    with pytest.raises(ExpiredError):
        await c.call(op, params, as_user=True, now=clock.now - 3601)
    with pytest.raises(ExpiredError):
        await c.call(op, params, as_user=True, now=clock.now + 301)
    await c.call(op, params, as_user=True, now=clock.now - 3600)
    # A token for another record (the sender id must be the record the params name).
    with pytest.raises(AuthError, match="another record"):
        await service.handle(op, other.request(op, params, as_user=True))
    # A token signed for another operation or other params does not transfer.
    signed = QsClientRequest.decode(
        c.request(Operation.DELETE_USER_RECORD, DeleteUserRecordParams(c.qs_uid), as_user=True)
    )
    with pytest.raises(SignatureError):
        await service.handle(op, signed.encode())
    swapped = QsClientRequest(UserRecordParams(other.qs_uid).encode(), signed.auth_token, b"pp")
    with pytest.raises(AuthError):
        await service.handle(op, swapped.encode())
    # Unknown record.
    ghost = await register(service)
    await ghost.call(Operation.DELETE_USER_RECORD, DeleteUserRecordParams(ghost.qs_uid), as_user=True)
    with pytest.raises(NotFound):
        await ghost.call(op, UserRecordParams(ghost.qs_uid), as_user=True)


async def test_update_user_record(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    other = await register(service)
    new_sk, new_pk = cs.generate_signature_key_pair()
    new_token = os.urandom(32)
    await c.call(
        Operation.UPDATE_USER_RECORD, UpdateUserRecordParams(c.qs_uid, new_pk, new_token), as_user=True
    )
    with pytest.raises(SignatureError):
        await c.call(Operation.GET_USER_RECORD, UserRecordParams(c.qs_uid), as_user=True)
    c.user_sk = new_sk
    resp = UserRecordResponse.decode(
        await c.call(Operation.GET_USER_RECORD, UserRecordParams(c.qs_uid), as_user=True)
    )
    assert (resp.user_record_auth_key, resp.friendship_token) == (new_pk, new_token)
    with pytest.raises(Conflict):
        await c.call(
            Operation.UPDATE_USER_RECORD,
            UpdateUserRecordParams(c.qs_uid, new_pk, other.friendship_token),
            as_user=True,
        )
    with pytest.raises(ValidationError):
        await c.call(
            Operation.UPDATE_USER_RECORD, UpdateUserRecordParams(c.qs_uid, new_pk, b"x"), as_user=True
        )


async def test_duplicate_friendship_token_conflicts(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    sig = cs.generate_signature_key_pair()[1]
    params = CreateUserRecordParams(sig, c.friendship_token, sig, cs.generate_hpke_key_pair()[1])
    with pytest.raises(Conflict):
        await service.handle(
            Operation.CREATE_USER_RECORD, QsClientRequest(params.encode(), None, b"pp").encode()
        )


async def test_client_records_limit_update_and_delete(db: Database) -> None:
    service = await make_service(db, config=QsConfig(max_client_records_per_user=3))
    c = await register(service)
    cids = [c.cid]
    for _ in range(2):
        sk, pk = cs.generate_signature_key_pair()
        resp = CreateClientRecordResponse.decode(
            await c.call(
                Operation.CREATE_CLIENT_RECORD,
                CreateClientRecordParams(c.qs_uid, pk, cs.generate_hpke_key_pair()[1]),
                as_user=True,
            )
        )
        assert resp.qs_cid.qs_uid == c.qs_uid
        cids.append(resp.qs_cid)
    with pytest.raises(ValidationError, match="at most 3"):
        await c.call(
            Operation.CREATE_CLIENT_RECORD,
            CreateClientRecordParams(c.qs_uid, pk, cs.generate_hpke_key_pair()[1]),
            as_user=True,
        )
    resp_user = UserRecordResponse.decode(
        await c.call(Operation.GET_USER_RECORD, UserRecordParams(c.qs_uid), as_user=True)
    )
    assert sorted(r.qs_cid for r in resp_user.client_records) == sorted(cids)

    # Update: a new queue encryption key gets a key update sealed to it at once.
    new_client_sk, new_client_pk = cs.generate_signature_key_pair()
    new_queue_sk, new_queue_pk = cs.generate_hpke_key_pair()
    await c.call(
        Operation.UPDATE_CLIENT_RECORD, UpdateClientRecordParams(c.cid, new_client_pk, new_queue_pk, None)
    )
    items = await service.queue_items(c.cid)
    assert [i.item_type for i in items] == [QueueItemType.INITIAL_KEY, QueueItemType.KEY_UPDATE]
    old_only = QueueReader(cs, [c.queue_sk])
    old_only.read(items[0])
    with pytest.raises(ValidationError):
        old_only.read(items[1])
    reader = QueueReader(cs, [new_queue_sk, c.queue_sk])
    assert reader.read_all(items) == []
    # The old client key no longer authenticates.
    with pytest.raises(SignatureError):
        await c.call(Operation.DELETE_CLIENT_RECORD, DeleteClientRecordParams(c.cid))
    c.client_sk = new_client_sk
    # Same queue key again: no key update.
    await c.call(
        Operation.UPDATE_CLIENT_RECORD, UpdateClientRecordParams(c.cid, new_client_pk, new_queue_pk, b"pt")
    )
    assert len(await service.queue_items(c.cid)) == 2

    # Deleting the clients one by one; the user record goes with the last one.
    await c.call(Operation.DELETE_CLIENT_RECORD, DeleteClientRecordParams(c.cid))
    with pytest.raises(NotFound):
        await service.queue_items(c.cid)
    async with db.transaction() as conn:
        for cid in cids[1:]:
            assert await service.store.delete_client(conn, cid)
        assert await service.store.get_user(conn, c.qs_uid) is None


async def test_delete_user_record_cascades(db: Database) -> None:
    service = await make_service(db)
    c = await register(service)
    await c.call(Operation.DELETE_USER_RECORD, DeleteUserRecordParams(c.qs_uid), as_user=True)
    with pytest.raises(NotFound):
        await service.queue_items(c.cid)
    async with db.transaction() as conn:
        assert await service.store.get_client(conn, c.cid) is None
        assert await conn.fetchval("SELECT COUNT(*) FROM qs_queue_messages") == 0


async def test_keys_persist_across_restarts(db: Database) -> None:
    first = await make_service(db)
    second = await make_service(db)
    assert first.verifying_key == second.verifying_key
    assert first.queue_config_encryption_key == second.queue_config_encryption_key
