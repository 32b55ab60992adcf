"""``phx demo``: the end-to-end path that exists today, run for real and checked.

Until the services and federation exist, the demo exercises the MLS engine the way the homeservers
will: three clients (alice, bob, carol) in one group, every handshake message validated by a
secret-free :class:`~phx.mls.public_group.PublicGroup` (the Delivery Service's view) before members
apply it, and application messages in both directions. The summary line counts what each recipient
actually decrypted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from phx.crypto import SUITE_1
from phx.mls.group import Group
from phx.mls.group_state import ApplicationMessage, CommitResult
from phx.mls.key_package import KeyPackageBundle, create_key_package
from phx.mls.messages import Credential, MLSMessage
from phx.mls.public_group import PublicGroup


@dataclass
class Client:
    name: str
    signature_private_key: bytes
    credential: Credential
    group: Group | None = None
    received: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def new(cls, name: str) -> Client:
        priv, _ = SUITE_1.generate_signature_key_pair()
        return cls(name, priv, Credential.basic(name.encode()))

    def key_package(self, now: int) -> KeyPackageBundle:
        return create_key_package(SUITE_1, self.credential, self.signature_private_key, now=now)


def run(say: Callable[[str], None] = print, now: int | None = None) -> int:
    """Run the demo; return 0 only if every message arrived at every intended recipient."""
    now = int(time.time()) if now is None else now
    alice, bob, carol = Client.new("alice"), Client.new("bob"), Client.new("carol")
    names = {0: "alice", 1: "bob", 2: "carol"}

    alice.group = Group.create(SUITE_1, alice.credential, alice.signature_private_key, now=now)
    gi = alice.group.group_info().group_info
    assert gi is not None
    ds = PublicGroup.from_group_info(gi, now=now)
    say(f"alice created a group (epoch {ds.epoch}); the DS holds its public state")

    def deliver_commit(sender: Client, result: CommitResult, others: list[Client]) -> None:
        # The DS validates the commit without any group secret before anyone applies it.
        outcome = ds.process(result.commit, now)
        ds.accept(outcome)
        assert sender.group is not None
        sender.group.merge_pending_commit()
        for c in others:
            assert c.group is not None
            c.group.process(result.commit, now=now)
        assert sender.group.epoch == ds.epoch

    bob_kp, carol_kp = bob.key_package(now), carol.key_package(now)
    result = alice.group.commit(now=now, add=[bob_kp.key_package, carol_kp.key_package])
    deliver_commit(alice, result, [])
    assert result.welcome is not None
    bob.group = Group.join_from_welcome(result.welcome, bob_kp, now=now)
    carol.group = Group.join_from_welcome(result.welcome, carol_kp, now=now)
    say(f"alice added bob and carol (epoch {ds.epoch}, {ds.member_count()} members; DS validated the commit)")

    members = [alice, bob, carol]
    expected = 0

    def send(sender: Client, text: str) -> None:
        nonlocal expected
        assert sender.group is not None
        wire = sender.group.send(text.encode()).encode()
        for c in members:
            if c is sender or c.group is None:
                continue
            expected += 1
            out = c.group.process(MLSMessage.decode(wire), now=now)
            if isinstance(out, ApplicationMessage):
                c.received.append((names[out.sender], out.data.decode()))
        say(f"{sender.name} -> group: {text!r}")

    send(alice, "hello bob and carol")
    send(bob, "hi alice")
    update = bob.group.commit(now=now, path=True)
    deliver_commit(bob, update, [alice, carol])
    say(f"bob refreshed his keys with an update commit (epoch {ds.epoch})")
    send(carol, "carol here, after bob's update")
    removal = alice.group.commit(now=now, remove=[2])
    deliver_commit(alice, removal, [bob])
    carol.group.process(removal.commit, now=now)
    members.remove(carol)
    say(f"alice removed carol (epoch {ds.epoch}, {ds.member_count()} members)")
    send(bob, "just us now")

    delivered = sum(len(c.received) for c in (alice, bob, carol))
    for c in (alice, bob, carol):
        for sender, text in c.received:
            say(f"  {c.name} read from {sender}: {text!r}")
    agree = alice.group.epoch_authenticator == bob.group.epoch_authenticator
    say(f"alice and bob agree on the epoch authenticator: {agree}")
    say(
        f"demo: {delivered}/{expected} messages delivered in one MLS group "
        "(MLS engine and DS public-group validation; services and federation are not built yet)"
    )
    return 0 if delivered == expected and agree else 1
