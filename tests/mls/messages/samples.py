"""Hand-built sample structs shared by the message tests."""

from __future__ import annotations

from phx.mls.messages import (
    Add,
    Capabilities,
    Commit,
    Credential,
    Extension,
    ExternalInit,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    HPKECiphertext,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalOrRef,
    ProtocolVersion,
    ReInit,
    Remove,
    ResumptionPSKUsage,
    Sender,
    Update,
    UpdatePath,
    UpdatePathNode,
)

CAPS = Capabilities((1,), (1, 0x0A0A), (0x1A1A,), (0x2A2A,), (1, 2))


def leaf(source: LeafNodeSource = LeafNodeSource.KEY_PACKAGE, cred: Credential | None = None) -> LeafNode:
    return LeafNode(
        encryption_key=b"\x01" * 32,
        signature_key=b"\x02" * 32,
        credential=cred or Credential.basic(b"alice"),
        capabilities=CAPS,
        leaf_node_source=source,
        lifetime=Lifetime(0, 2**64 - 1) if source == LeafNodeSource.KEY_PACKAGE else None,
        parent_hash=b"\x03" * 32 if source == LeafNodeSource.COMMIT else None,
        extensions=(Extension(0xF0F0, b"custom"),),
        signature=b"\x04" * 64,
    )


def key_package() -> KeyPackage:
    return KeyPackage(ProtocolVersion.MLS10, 1, b"\x05" * 32, leaf(), (), b"\x06" * 64)


def group_context(epoch: int = 7) -> GroupContext:
    return GroupContext(ProtocolVersion.MLS10, 1, b"group", epoch, b"\x07" * 32, b"\x08" * 32, ())


def update_path() -> UpdatePath:
    node = UpdatePathNode(b"\x09" * 32, (HPKECiphertext(b"kem", b"ct"), HPKECiphertext(b"k2", b"c2")))
    return UpdatePath(leaf(LeafNodeSource.COMMIT), (node,))


def proposals() -> list[Proposal]:
    return [
        Proposal(Add(key_package())),
        Proposal(Update(leaf(LeafNodeSource.UPDATE))),
        Proposal(Remove(3)),
        Proposal(PreSharedKey(PreSharedKeyID.external(b"psk", b"nonce"))),
        Proposal(PreSharedKey(PreSharedKeyID.resumption(ResumptionPSKUsage.BRANCH, b"g", 9, b"n"))),
        Proposal(ReInit(b"new", ProtocolVersion.MLS10, 2, (Extension(1, b"app"),))),
        Proposal(ExternalInit(b"kem")),
        Proposal(GroupContextExtensions((Extension(3, b""),))),
    ]


def commit() -> Commit:
    refs = [ProposalOrRef(b"\x0a" * 32)] + [ProposalOrRef(p) for p in proposals()]
    return Commit(tuple(refs), update_path())


def framed(body: bytes | Proposal | Commit, sender: Sender | None = None) -> FramedContent:
    return FramedContent(b"group", 7, sender or Sender.member(2), b"aad", body)


def auth_for(content: FramedContent) -> FramedContentAuthData:
    is_commit = isinstance(content.body, Commit)
    return FramedContentAuthData(b"\x0b" * 64, b"\x0c" * 32 if is_commit else None)
