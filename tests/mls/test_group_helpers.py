"""Shared builders for the group tests (clients, groups of n members, delivery), plus their own checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from phx.crypto import SUITE_1
from phx.mls.group import Group
from phx.mls.group_state import CommitApplied, CommitResult, Outcome
from phx.mls.key_package import KeyPackageBundle, create_key_package
from phx.mls.messages import Credential, MLSMessage

CS = SUITE_1
NOW = 1_700_000_000


@dataclass
class Client:
    name: str
    credential: Credential
    signature_private_key: bytes

    def key_package(self, **kw: Any) -> KeyPackageBundle:
        return create_key_package(CS, self.credential, self.signature_private_key, now=NOW, **kw)

    def create_group(self, **kw: Any) -> Group:
        return Group.create(CS, self.credential, self.signature_private_key, now=NOW, **kw)


def client(name: str) -> Client:
    priv, _ = CS.generate_signature_key_pair()
    return Client(name, Credential.basic(name.encode()), priv)


def deliver(message: MLSMessage, groups: Iterable[Group]) -> list[Outcome]:
    """Process one message at every group, going through the wire encoding."""
    data = message.encode()
    return [g.process(data, now=NOW) for g in groups]


def commit_all(committer: Group, others: Sequence[Group], **kw: Any) -> tuple[CommitResult, CommitApplied]:
    """``committer`` commits, every other member processes it, then the committer merges."""
    result = committer.commit(now=NOW, **kw)
    for outcome in deliver(result.commit, others):
        assert isinstance(outcome, CommitApplied)
    return result, committer.merge_pending_commit()


def make_group(n: int, **create_kw: Any) -> tuple[list[Client], list[Group]]:
    """A group of ``n`` members (creator at leaf 0) built by one commit adding everyone else."""
    clients = [client(f"member-{i}") for i in range(n)]
    creator = clients[0].create_group(**create_kw)
    bundles = [c.key_package() for c in clients[1:]]
    groups = [creator]
    if bundles:
        result = creator.commit(now=NOW, add=[b.key_package for b in bundles])
        creator.merge_pending_commit()
        assert result.welcome is not None
        groups += [Group.join_from_welcome(result.welcome.encode(), b, now=NOW) for b in bundles]
    return clients, groups


def assert_in_sync(groups: Sequence[Group]) -> None:
    first = groups[0]
    for g in groups[1:]:
        assert g.epoch == first.epoch
        assert g.epoch_authenticator == first.epoch_authenticator
        assert g.context == first.context
        assert g.tree == first.tree
        assert g.export_secret(b"test", b"", 32) == first.export_secret(b"test", b"", 32)


def test_make_group_builds_synchronised_members() -> None:
    _, groups = make_group(3)
    assert [g.leaf_index for g in groups] == [0, 1, 2]
    assert all(g.member_count == 3 for g in groups)
    assert_in_sync(groups)


def test_assert_in_sync_detects_divergence() -> None:
    _, groups = make_group(2)
    groups[0].commit(now=NOW)
    groups[0].merge_pending_commit()
    try:
        assert_in_sync(groups)
    except AssertionError:
        return
    raise AssertionError("diverged groups were reported in sync")
