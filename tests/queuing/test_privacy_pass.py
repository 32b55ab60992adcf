"""The QS with the real Privacy Pass redeemer (phx.privacypass) instead of the accept-all double."""

from __future__ import annotations

import os

import pytest

from phx.errors import TokenError
from phx.privacypass import TokenRedeemer, finalize_tokens, phoenix_challenge, request_tokens
from phx.queuing.messages import (
    CreateUserRecordParams,
    DequeueMessagesParams,
    Operation,
    QsClientRequest,
    QueueConfigEncryptionKeyResponse,
)
from phx.storage import Database, migrate

from .helpers import DOMAIN, T0, AcceptAll, FakeClock, cs, make_service, register

DAY = 86_400


async def test_real_tokens_are_spent_once(db: Database) -> None:
    await migrate(db, "as")
    redeemer = TokenRedeemer.for_domain(db, DOMAIN, DAY)
    clock = FakeClock(T0)
    service = await make_service(db, clock, redeemer=redeemer)
    key = (await redeemer.keyring.current(T0)).key
    pending = request_tokens(key.public_key, phoenix_challenge(DOMAIN), 2)
    first, second = (t.encode() for t in finalize_tokens(pending, key.issue(pending.request, max_batch=10)))

    body = QsClientRequest(b"", None, first).encode()
    resp = QueueConfigEncryptionKeyResponse.decode(
        await service.handle(Operation.QUEUE_CONFIG_ENCRYPTION_KEY, body)
    )
    assert resp.encryption_key == service.queue_config_encryption_key
    with pytest.raises(TokenError, match="already been spent"):
        await service.handle(Operation.QUEUE_CONFIG_ENCRYPTION_KEY, body)

    sig = cs.generate_signature_key_pair()[1]
    params = CreateUserRecordParams(sig, os.urandom(32), sig, cs.generate_hpke_key_pair()[1])
    with pytest.raises(TokenError):
        await service.handle(
            Operation.CREATE_USER_RECORD, QsClientRequest(params.encode(), None, os.urandom(80)).encode()
        )
    await service.handle(
        Operation.CREATE_USER_RECORD, QsClientRequest(params.encode(), None, second).encode()
    )


async def test_dequeue_needs_no_token(db: Database) -> None:
    await migrate(db, "as")
    service = await make_service(db, redeemer=TokenRedeemer.for_domain(db, DOMAIN, DAY))
    # Register through a second service (same database) that accepts any token.
    c = await register(await make_service(db, redeemer=AcceptAll()))
    c.service = service
    await c.call(Operation.DEQUEUE_MESSAGES, DequeueMessagesParams(c.cid, 0, 10), token=None)
