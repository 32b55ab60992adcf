"""The client side of ``bench_federation.py --entry ds``, none of it timed: ten clients of the phx.client
library (five registered at a.test, five at b.test) build the group through the real protocol, then the
senders (all ten members, or the five of a.test) protect the measured application messages, fetch Privacy
Pass tokens from a.test's AS (its issuance endpoint, batches of 100; b.test's members are federated clients
there, as at the DS) and sign their DS requests; after the run every member drains
its QS queue (dequeue and queue decryption, as a client does) so the bench can check what arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _fed_common import MEMBERS, A, B
from _fed_load import http_request

from phx.auth.messages import RequestToken
from phx.client import Event, PhxClient
from phx.client.wire import CS, ClientMessage
from phx.delivery.messages import DsRequest, DsSenderId, Operation, SendMessageParams
from phx.privacypass import finalize_tokens, phoenix_challenge, request_tokens
from phx.queues import QueueReader
from phx.queuing.messages import DequeueMessagesParams, FanOutQueuePayload, MessageContent

GROUP = "bench"
A_MEMBERS = [f"a{k}@{A}" for k in range(MEMBERS)]
B_MEMBERS = [f"b{k}@{B}" for k in range(MEMBERS)]
TOKEN_BATCH = 100  # as.max_tokens_per_request's default


@dataclass
class Prepared:
    #: (message index, connection = index of the sender in ``senders``, HTTP request), in send order.
    requests: list[tuple[int, int, bytes]]
    #: Per index: the encoded MLSMessage, and its PrivateMessage ciphertext (which names it).
    messages: list[bytes]
    ciphertexts: list[bytes]
    #: The sending members; message i is sent by ``senders[i % len(senders)]``.
    senders: list[str]

    def sender_of(self, index: int) -> str:
        return self.senders[index % len(self.senders)]


async def sync_until(
    client: PhxClient, done: Callable[[list[Event]], bool], what: str, timeout: float = 60.0
) -> None:
    seen: list[Event] = []
    end = time.monotonic() + timeout
    while True:
        seen += await client.sync()
        if done(seen):
            return
        if time.monotonic() > end:
            raise RuntimeError(f"set-up timed out waiting for {what}; saw {[e.as_dict() for e in seen][-5:]}")
        await asyncio.sleep(0.05)


class Members:
    def __init__(self, home: Path, ca_file: Path, hosts: dict[str, str]) -> None:
        self.clients = {
            address: PhxClient.open(home / address, ca_file=ca_file, hosts=hosts)
            for address in A_MEMBERS + B_MEMBERS
        }

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.aclose()

    async def build(self) -> None:
        """Register everyone; a0 connects to the nine others, creates the group on ds.a.test and invites
        them one by one; everyone syncs until they are all at a0's epoch with ten members."""
        cs = self.clients
        await asyncio.gather(*(c.register(a, b"bench password of " + a.encode()) for a, c in cs.items()))
        admin, others = cs[A_MEMBERS[0]], [a for a in cs if a != A_MEMBERS[0]]
        for address in others:
            await admin.connect(address)

        async def accept(address: str) -> None:
            c = cs[address]
            requests: list[int] = []

            def found(events: list[Event]) -> bool:
                requests.extend(e.request_id for e in events if e.kind == "request")
                return bool(requests)

            await sync_until(c, found, f"{address}'s connection request")
            await c.accept(requests[0])

        await asyncio.gather(*(accept(a) for a in others))
        await sync_until(
            admin,
            lambda _: len(admin.contacts()) == len(others) and all(x.ready for x in admin.contacts()),
            "the acceptances",
        )

        async def ready(address: str) -> None:
            c = cs[address]
            await sync_until(c, lambda _: all(x.ready for x in c.contacts()), f"{address}'s contact")

        await asyncio.gather(*(ready(a) for a in others))
        await admin.create_group(GROUP)
        for address in others:
            await admin.invite(GROUP, address)
        epoch = admin.groups()[0].epoch

        async def caught_up(address: str) -> None:
            c = cs[address]

            def done(_: list[Event]) -> bool:
                groups = c.groups()
                return len(groups) == 1 and groups[0].epoch == epoch and len(groups[0].members) == len(cs)

            await sync_until(c, done, f"{address} joining at epoch {epoch}")

        await asyncio.gather(*(caught_up(a) for a in others))
        # Nothing left in anyone's queue: what is dequeued after the run is the run's.
        await asyncio.gather(*(c.sync() for c in cs.values()))

    async def tokens(self, address: str, count: int) -> list[bytes]:
        """``count`` Privacy Pass tokens of a.test for ``address``, issued by as.a.test in batches (under its
        federated key for a client of b.test)."""
        s = self.clients[address].session
        auth = s.client_auth()
        key = (await s.api.token_keys(A)).key_for(s.domain, A)
        out: list[bytes] = []
        while len(out) < count:
            pending = request_tokens(key, phoenix_challenge(A), min(TOKEN_BATCH, count - len(out)))
            response = await s.api.request_tokens(A, RequestToken(pending.request), auth)
            out += [t.encode() for t in finalize_tokens(pending, response.token_response)]
        return out

    async def prepare(self, total: int, text_size: int, senders: list[str]) -> Prepared:
        """Messages 0..total-1, message i sent by ``senders[i mod len(senders)]`` (round robin)."""
        n = len(senders)
        counts = [len(range(j, total, n)) for j in range(n)]
        tokens = await asyncio.gather(*(self.tokens(a, c) for a, c in zip(senders, counts, strict=True)))
        sessions = [self.clients[a].session for a in senders]
        rows = [s.find_group(GROUP) for s in sessions]
        groups = [s.load_group(r) for s, r in zip(sessions, rows, strict=True)]
        now = int(time.time())
        filler = "x" * max(0, text_size - 22)
        out = Prepared([], [], [], senders)
        for i in range(total):
            j = i % n
            row, group = rows[j], groups[j]
            message = group.send(ClientMessage.of_text(f"bench message {i:07d} {filler}").encode())
            request = DsRequest.signed(
                Operation.SEND_MESSAGE.value, SendMessageParams(message, row.ear_key), row.group_id,
                DsSenderId.leaf(group.leaf_index), row.leaf_key, now, privacy_pass_token=tokens[j].pop(),
            )  # fmt: skip
            out.requests.append((i, j, http_request(f"ds.{A}", "/ds/v1/send_message", request.encode())))
            out.messages.append(message.encode())
            assert message.private_message is not None
            out.ciphertexts.append(message.private_message.ciphertext)
        for s, row, group in zip(sessions, rows, groups, strict=True):
            with s.state.tx() as c:  # the generations are used up
                s.save_group(c, row, group)
        return out

    async def drain(self, address: str) -> list[MessageContent]:
        """Everything in ``address``'s QS queue since the last sync, decrypted as the client does."""
        s = self.clients[address].session
        me = s.me()
        assert me.qs_cid is not None
        raw = s.state.get("qs_reader")
        assert raw is not None
        reader = QueueReader.from_bytes(raw, CS)
        out: list[MessageContent] = []
        while True:
            params = DequeueMessagesParams(me.qs_cid, reader.next_sequence, 500)
            response = await s.api.dequeue(me.client_id.domain, params, s.qs_auth())
            for item in response.messages:
                plaintext = reader.read(item)
                if plaintext is not None:
                    out.append(FanOutQueuePayload.decode(plaintext).content)
            if response.remaining_messages_number == 0 or not response.messages:
                return out
