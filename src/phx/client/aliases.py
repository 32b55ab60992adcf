"""Aliases (book: authentication_service.md, "Register alias" …): names under which a user can be found
without revealing its user id.

An alias ``name@domain`` is registered at ``as.<domain>`` with its own auth key and its own queue; its
connection package payloads carry no credential (so nothing links the alias to the user id or to other
aliases) and use fresh connection keys. Someone connecting to the alias sends the usual signed
ConnectionEstablishmentPackage, sealed to such a payload's key, into the alias queue; the alias owner
sees it in ``requests`` like any other and answers the same way. The initiator learns who owns the
alias only if the owner accepts: the join commit carries the owner's credential.
"""

from __future__ import annotations

import os
import sqlite3
import unicodedata
import uuid

from phx.auth.client import sign_connection_establishment_package
from phx.auth.core import check_payload
from phx.auth.messages import (
    Alias,
    ConnectionPackagePayload,
    DequeueAliasMessagesParams,
    EnqueueAliasMessageParams,
    RegisterAlias,
    UploadAliasPackages,
)
from phx.credentials import DEFAULT_CREDENTIAL_CIPHERSUITE, ExpirationData
from phx.errors import ValidationError
from phx.identifiers import Fqdn, UserId
from phx.queues import QueueMessage, QueueReader

from .session import ClientError, Session
from .state import AliasRow, RequestRow
from .wire import CS, seal_connection_establishment

__all__ = [
    "ALIAS_PREFIX",
    "NOBODY",
    "add_alias",
    "alias_items",
    "connect_alias",
    "list_aliases",
    "parse_alias",
    "remove_alias",
    "store_alias_reader",
]

#: ``requests.target`` of a request sent to an alias: ``alias:<name>@<domain>``.
ALIAS_PREFIX = "alias:"
#: The user id stored with a request to an alias until the owner answers.
NOBODY = uuid.UUID(int=0)
ALIAS_PACKAGES = 5
PACKAGE_LIFETIME = 30 * 86_400


def parse_alias(text: str) -> tuple[Alias, Fqdn]:
    name, sep, domain = text.strip().rpartition("@")
    if not sep or not name or not domain:
        raise ClientError(f"not an alias address (expected ALIAS@DOMAIN): {text!r}")
    try:
        return Alias(unicodedata.normalize("NFC", name)), Fqdn.parse(domain)
    except ValidationError as e:
        raise ClientError(f"invalid alias {text!r}: {e}") from None


def _payloads(s: Session, c: sqlite3.Connection, count: int) -> list[ConnectionPackagePayload]:
    now = s.clock()
    out = []
    for _ in range(count):
        sk, pk = CS.generate_hpke_key_pair()
        payload = ConnectionPackagePayload(pk, ExpirationData(now - 60, now + PACKAGE_LIFETIME))
        check_payload(payload, now)
        s.state.add_connection_key(c, pk, sk, now + PACKAGE_LIFETIME)
        out.append(payload)
    return out


async def add_alias(s: Session, text: str) -> AliasRow:
    """Register ``name`` (or ``name@our-domain``) as an alias of ours and publish connection payloads."""
    me = s.me()
    domain = me.client_id.domain
    alias, alias_domain = parse_alias(text if "@" in text else f"{text}@{domain}")
    if alias_domain != domain:
        raise ClientError(f"aliases are registered with your own homeserver ({domain})")
    address = f"{alias}@{domain}"
    if any(a.alias == address for a in s.state.aliases()):
        raise ClientError(f"{address} is already one of your aliases")
    auth_key, auth_pub = DEFAULT_CREDENTIAL_CIPHERSUITE.generate_key_pair()
    queue_key, queue_pub = CS.generate_hpke_key_pair()
    ratchet_key = os.urandom(CS.nh)
    await s.api.register_alias(domain, RegisterAlias(alias, auth_pub, queue_pub, ratchet_key))
    row = AliasRow(
        address,
        auth_key,
        queue_key,
        QueueReader(CS, [queue_key], ratchet_key=ratchet_key).to_bytes(),
        s.clock(),
    )
    with s.state.tx() as c:
        s.state.put_alias(c, row)
        payloads = _payloads(s, c, ALIAS_PACKAGES)
    await s.api.upload_alias_packages(domain, UploadAliasPackages(alias, tuple(payloads)), auth_key)
    return row


async def remove_alias(s: Session, text: str) -> None:
    me = s.me()
    alias, _ = parse_alias(text if "@" in text else f"{text}@{me.client_id.domain}")
    address = f"{alias}@{me.client_id.domain}"
    row = next((a for a in s.state.aliases() if a.alias == address), None)
    if row is None:
        raise ClientError(f"{address} is not one of your aliases")
    await s.api.delete_alias(me.client_id.domain, alias, row.auth_key)
    with s.state.tx() as c:
        s.state.delete_alias(c, address)


def list_aliases(s: Session) -> list[str]:
    return [a.alias for a in s.state.aliases()]


async def connect_alias(s: Session, text: str) -> RequestRow:
    """A connection request to whoever owns the alias (we learn who when they accept)."""
    from .connections import new_connection_group

    me = s.me()
    alias, domain = parse_alias(text)
    address = f"{alias}@{domain}"
    if address in list_aliases(s):
        raise ClientError("that is one of your own aliases")
    for r in s.state.requests("out"):
        if r.target == ALIAS_PREFIX + address and r.status in ("sending", "pending"):
            raise ClientError(f"a connection request to {address} is already pending (#{r.id})")
    payload = (await s.api.alias_package(domain, alias)).connection_package
    check_payload(payload, s.clock())
    row, _ = await new_connection_group(s)
    cep = sign_connection_establishment_package(
        me.cred, me.signing_key, row.group_id, row.ear_key, row.credential_key
    )
    ctxt = seal_connection_establishment(payload.encryption_key, cep.encode())
    with s.state.tx() as c:
        request_id = s.state.add_request(
            c, "out", UserId(domain, NOBODY), row.group_id, ctxt, "sending", s.clock(), ALIAS_PREFIX + address
        )
    await deliver_to_alias(s, request_id)
    request = s.state.request(request_id)
    assert request is not None
    return request


async def deliver_to_alias(s: Session, request_id: int) -> None:
    request = s.state.request(request_id)
    assert request is not None and request.target.startswith(ALIAS_PREFIX)
    alias, domain = parse_alias(request.target.removeprefix(ALIAS_PREFIX))
    await s.api.enqueue_alias_message(domain, EnqueueAliasMessageParams(alias, request.package))
    with s.state.tx() as c:
        s.state.set_request_status(c, request_id, "pending")


async def alias_items(s: Session, row: AliasRow) -> tuple[list[QueueMessage], int]:
    """The next batch of an alias queue, from the position its reader stands at."""
    alias, domain = parse_alias(row.alias)
    reader = QueueReader.from_bytes(row.reader, CS)
    params = DequeueAliasMessagesParams(alias, reader.next_sequence, 100)
    response = await s.api.dequeue_alias_messages(domain, params, row.auth_key)
    return list(response.messages), response.remaining_messages_number


def store_alias_reader(s: Session, c: sqlite3.Connection, address: str, reader: bytes) -> None:
    row = next((a for a in s.state.aliases() if a.alias == address), None)
    if row is not None:
        from dataclasses import replace

        s.state.put_alias(c, replace(row, reader=reader))
