"""Round trips, exact wire forms and strictness of the RFC 9420 structs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from phx.codec import Reader
from phx.crypto import SUITE_1
from phx.errors import DecodeError
from phx.mls.messages import (
    Capabilities,
    Commit,
    ContentType,
    Credential,
    CredentialType,
    EncryptedGroupSecrets,
    Extension,
    ExtensionType,
    ExternalSender,
    FramedContentAuthData,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    MLSMessage,
    Node,
    NodeType,
    ParentNode,
    PathSecret,
    PreSharedKeyID,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    Proposal,
    ProposalOrRefType,
    ProposalType,
    ProtocolVersion,
    PSKLabel,
    PSKType,
    PublicMessage,
    RequiredCapabilities,
    ResumptionPSKUsage,
    Sender,
    SenderData,
    SenderDataAAD,
    SenderType,
    UpdatePath,
    Welcome,
    WireFormat,
    authenticated_content_tbm,
    decode_ratchet_tree,
    encode_ratchet_tree,
    find_extension,
    framed_content_tbs,
    group_info_tbs,
    key_package_tbs,
    leaf_node_tbs,
    make_external_pub_extension,
    make_external_senders_extension,
    make_key_package_ref,
    make_proposal_ref,
    make_ratchet_tree_extension,
    make_required_capabilities_extension,
    parent_hash_input,
    parse_external_pub,
    parse_external_senders,
    parse_ratchet_tree_extension,
    parse_required_capabilities,
    tree_hash_input_leaf,
    tree_hash_input_parent,
)
from tests.mls.messages import samples


def test_credential_forms() -> None:
    basic = Credential.basic(b"id")
    assert basic.encode() == bytes.fromhex("0001") + b"\x02id"
    x509 = Credential.x509((b"c1", b"cc2"))
    assert x509.encode() == bytes.fromhex("0002") + b"\x07" + b"\x02c1" + b"\x03cc2"
    custom = Credential.custom(0xF001, b"phoenix-leaf")
    assert custom.encode() == bytes.fromhex("f001") + b"\x0cphoenix-leaf"
    for c in (basic, x509, custom):
        assert Credential.decode(c.encode()) == c
    assert Credential.decode(custom.encode()).credential_type == 0xF001
    assert basic.credential_type == CredentialType.BASIC


def test_credential_rejects_mismatched_fields() -> None:
    with pytest.raises(ValueError):
        Credential(CredentialType.BASIC, certificates=(b"x",))
    with pytest.raises(ValueError):
        Credential(CredentialType.X509, identity=b"x")
    with pytest.raises(ValueError):
        Credential(77, identity=b"x")


def test_capabilities_keep_grease_values() -> None:
    caps = Capabilities.decode(samples.CAPS.encode())
    assert caps == samples.CAPS
    assert 0x0A0A in caps.cipher_suites


@pytest.mark.parametrize("source", list(LeafNodeSource))
def test_leaf_node_round_trip(source: LeafNodeSource) -> None:
    leaf = samples.leaf(source)
    data = leaf.encode()
    assert LeafNode.decode(data) == leaf
    assert data.endswith(b"\x40\x40" + b"\x04" * 64)


def test_leaf_node_source_fields_must_match() -> None:
    good = samples.leaf(LeafNodeSource.UPDATE)
    with pytest.raises(ValueError, match="lifetime"):
        replace(good, lifetime=Lifetime(0, 1))
    with pytest.raises(ValueError, match="parent_hash"):
        replace(good, parent_hash=b"")
    with pytest.raises(ValueError, match="lifetime"):
        replace(samples.leaf(LeafNodeSource.KEY_PACKAGE), lifetime=None)
    data = bytearray(good.encode())
    pos = 33 + 33 + len(good.credential.encode()) + len(good.capabilities.encode())
    assert data[pos] == LeafNodeSource.UPDATE
    data[pos] = 9
    with pytest.raises(DecodeError, match="LeafNodeSource"):
        LeafNode.decode(bytes(data))


def test_leaf_node_cached_encoding_follows_the_value() -> None:
    leaf = samples.leaf(LeafNodeSource.COMMIT)
    data = leaf.encode()
    decoded = LeafNode.decode(data)
    assert decoded.encode() == data
    assert LeafNode.decode(memoryview(data)).encode() == data
    changed = replace(decoded, parent_hash=b"\x99")
    assert changed.encode() != data and LeafNode.decode(changed.encode()) == changed
    assert decoded.with_signature(b"s").encode().endswith(b"\x01s")
    assert leaf_node_tbs(decoded, b"g", 1) == leaf_node_tbs(leaf, b"g", 1)


def test_leaf_node_tbs() -> None:
    kp_leaf = samples.leaf(LeafNodeSource.KEY_PACKAGE)
    full = kp_leaf.encode()
    assert leaf_node_tbs(kp_leaf) == full[: -(2 + 64)]
    upd = samples.leaf(LeafNodeSource.UPDATE)
    tbs = leaf_node_tbs(upd, b"grp", 5)
    assert tbs == upd.encode()[: -(2 + 64)] + b"\x03grp" + (5).to_bytes(4, "big")
    assert upd.tbs(b"grp", 5) == tbs
    with pytest.raises(ValueError):
        leaf_node_tbs(upd)
    assert upd.with_signature(b"s").signature == b"s"


def test_key_package_and_ref() -> None:
    kp = samples.key_package()
    data = kp.encode()
    assert KeyPackage.decode(data) == kp
    assert key_package_tbs(kp) == data[: -(2 + 64)]
    ref = make_key_package_ref(SUITE_1, data)
    assert ref == SUITE_1.hash(
        b"\x1cMLS 1.0 KeyPackage Reference" + bytes([0x40 | (len(data) >> 8), len(data) & 0xFF]) + data
    )
    assert make_proposal_ref(SUITE_1, b"x") == SUITE_1.hash(b"\x1aMLS 1.0 Proposal Reference\x01x")


def test_key_package_unknown_version_is_decode_error() -> None:
    data = bytearray(samples.key_package().encode())
    data[1] = 2
    with pytest.raises(DecodeError):
        KeyPackage.decode(bytes(data))


def test_ratchet_tree_round_trip_and_node_type() -> None:
    parent = ParentNode(b"pk", b"ph", (1, 3))
    tree = (Node(samples.leaf()), Node(parent), None, None, Node(samples.leaf(LeafNodeSource.COMMIT)))
    data = encode_ratchet_tree(tree)
    assert decode_ratchet_tree(data) == tree
    assert tree[0] is not None and tree[0].node_type == NodeType.LEAF and tree[0].parent_node is None
    assert tree[1] is not None and tree[1].parent_node == parent and tree[1].leaf_node is None
    assert ParentNode.decode(parent.encode()).unmerged_leaves == (1, 3)
    # Unknown node type and bad presence octet.
    with pytest.raises(DecodeError, match="NodeType"):
        Node.decode(b"\x03")
    with pytest.raises(DecodeError, match="presence"):
        decode_ratchet_tree(b"\x01\x02")
    assert decode_ratchet_tree(b"\x02\x00\x00") == (None, None)
    ext = make_ratchet_tree_extension(tree)
    assert ext.extension_type == ExtensionType.RATCHET_TREE
    assert parse_ratchet_tree_extension(ext) == tree


def test_tree_hash_inputs() -> None:
    leaf = samples.leaf()
    assert tree_hash_input_leaf(3, None) == b"\x01\x00\x00\x00\x03\x00"
    assert tree_hash_input_leaf(3, leaf) == b"\x01\x00\x00\x00\x03\x01" + leaf.encode()
    p = ParentNode(b"k", b"", ())
    assert tree_hash_input_parent(p, b"L", b"R") == b"\x02\x01" + p.encode() + b"\x01L\x01R"
    assert tree_hash_input_parent(None, b"", b"") == b"\x02\x00\x00\x00"
    assert parent_hash_input(b"a", b"bb", b"") == b"\x01a\x02bb\x00"


def test_update_path_and_group_context() -> None:
    up = samples.update_path()
    assert UpdatePath.decode(up.encode()) == up
    gc = samples.group_context()
    data = gc.encode()
    assert data[:4] == b"\x00\x01\x00\x01"
    assert type(gc).decode(data) == gc


def test_proposals_round_trip() -> None:
    for p in samples.proposals():
        data = p.encode()
        assert int.from_bytes(data[:2], "big") == p.proposal_type
        assert Proposal.decode(data) == p
        assert type(p.value).decode(data[2:]) == p.value


@pytest.mark.parametrize("ptype", [0, 8, 0x0A0A, 0xFFFF])
def test_unknown_proposal_type_is_decode_error(ptype: int) -> None:
    with pytest.raises(DecodeError, match="ProposalType"):
        Proposal.decode(ptype.to_bytes(2, "big") + b"\x00")


def test_psk_id_forms() -> None:
    ext = PreSharedKeyID.external(b"id", b"nonce")
    assert ext.encode() == b"\x01\x02id\x05nonce"
    res = PreSharedKeyID.resumption(ResumptionPSKUsage.APPLICATION, b"g", 1, b"n")
    assert res.encode() == b"\x02\x01\x01g" + (1).to_bytes(8, "big") + b"\x01n"
    with pytest.raises(ValueError):
        PreSharedKeyID(PSKType.EXTERNAL, b"id", ResumptionPSKUsage.APPLICATION, None, None, b"")
    with pytest.raises(ValueError):
        PreSharedKeyID(PSKType.RESUMPTION, None, ResumptionPSKUsage.APPLICATION, b"g", None, b"")
    with pytest.raises(DecodeError, match="ResumptionPSKUsage"):
        PreSharedKeyID.decode(b"\x02\x04")
    with pytest.raises(DecodeError, match="PSKType"):
        PreSharedKeyID.decode(b"\x03")
    label = PSKLabel(ext, 0, 2)
    assert label.encode() == ext.encode() + b"\x00\x00\x00\x02"


def test_commit_round_trip_and_refs() -> None:
    c = samples.commit()
    assert Commit.decode(c.encode()) == c
    assert c.proposals[0].type == ProposalOrRefType.REFERENCE and c.proposals[0].reference == b"\x0a" * 32
    assert c.proposals[1].proposal is not None
    assert Commit.decode(Commit((), None).encode()) == Commit((), None)
    with pytest.raises(DecodeError):
        Commit.decode(b"\x02\x03\x00\x00")  # unknown ProposalOrRefType


def test_sender_forms() -> None:
    assert Sender.member(5).encode() == b"\x01\x00\x00\x00\x05"
    assert Sender.external(1).encode() == b"\x02\x00\x00\x00\x01"
    assert Sender.new_member_proposal().encode() == b"\x03"
    assert Sender.new_member_commit().encode() == b"\x04"
    assert Sender.member(5).leaf_index == 5 and Sender.member(5).sender_index is None
    assert Sender.external(1).sender_index == 1
    with pytest.raises(ValueError):
        Sender(SenderType.MEMBER)
    with pytest.raises(ValueError):
        Sender(SenderType.NEW_MEMBER_COMMIT, 1)
    with pytest.raises(DecodeError):
        Sender.decode(b"\x05")


@pytest.mark.parametrize("kind", ["application", "proposal", "commit"])
@pytest.mark.parametrize("sender", [Sender.member(1), Sender.external(0), Sender.new_member_commit()])
def test_public_message(kind: str, sender: Sender) -> None:
    bodies: dict[str, bytes | Proposal | Commit] = {
        "application": b"hello",
        "proposal": samples.proposals()[2],
        "commit": samples.commit(),
    }
    body = bodies[kind]
    content = samples.framed(body, sender)
    auth = samples.auth_for(content)
    is_member = sender.sender_type == SenderType.MEMBER
    tag = b"\x0d" * 32 if is_member else None
    pm = PublicMessage(content, auth, tag)
    msg = MLSMessage(pm)
    data = msg.encode()
    assert data[:4] == b"\x00\x01\x00\x01"
    back = MLSMessage.decode(data)
    assert back == msg and back.public_message == pm and back.wire_format == WireFormat.PUBLIC_MESSAGE
    assert back.private_message is None
    assert content.content_type == ContentType[kind.upper()]
    with pytest.raises(ValueError):
        PublicMessage(content, auth, None if is_member else b"t")
    other_auth = FramedContentAuthData(auth.signature, None if kind == "commit" else b"tag")
    with pytest.raises(ValueError):
        PublicMessage(content, other_auth, tag)


def test_framed_content_tbs_and_tbm() -> None:
    gc = samples.group_context()
    member = samples.framed(b"x", Sender.member(0))
    tbs = framed_content_tbs(WireFormat.PUBLIC_MESSAGE, member, gc)
    assert tbs == b"\x00\x01\x00\x01" + member.encode() + gc.encode()
    assert framed_content_tbs(WireFormat.PUBLIC_MESSAGE, member, gc.encode()) == tbs
    with pytest.raises(ValueError):
        framed_content_tbs(WireFormat.PUBLIC_MESSAGE, member, None)
    ext = samples.framed(b"x", Sender.external(0))
    assert framed_content_tbs(WireFormat.PRIVATE_MESSAGE, ext, gc) == b"\x00\x01\x00\x02" + ext.encode()
    auth = samples.auth_for(member)
    assert authenticated_content_tbm(tbs, auth) == tbs + auth.encode()


def test_auth_data_needs_content_type() -> None:
    auth = FramedContentAuthData(b"sig", b"tag")
    assert FramedContentAuthData.decode_for(auth.encode(), ContentType.COMMIT) == auth
    with pytest.raises(DecodeError):
        FramedContentAuthData.decode_for(auth.encode(), ContentType.APPLICATION)  # trailing tag
    with pytest.raises(DecodeError):
        FramedContentAuthData.decode(auth.encode())


@pytest.mark.parametrize("padding", [0, 1, 17])
def test_private_message_content(padding: int) -> None:
    c = samples.commit()
    pmc = PrivateMessageContent(c, FramedContentAuthData(b"sig", b"tag"), padding)
    data = pmc.encode()
    assert data.endswith(bytes(padding))
    assert PrivateMessageContent.decode_for(data, ContentType.COMMIT) == pmc
    app = PrivateMessageContent(b"hi", FramedContentAuthData(b"sig"), padding)
    assert PrivateMessageContent.decode_for(app.encode(), ContentType.APPLICATION) == app
    with pytest.raises(DecodeError, match="padding"):
        PrivateMessageContent.decode_for(app.encode() + b"\x00\x01", ContentType.APPLICATION)
    with pytest.raises(DecodeError):
        PrivateMessageContent.decode(app.encode())
    with pytest.raises(ValueError):
        PrivateMessageContent(b"hi", FramedContentAuthData(b"sig", b"tag"))


def test_private_message_and_aads() -> None:
    pm = PrivateMessage(b"g", 3, ContentType.APPLICATION, b"aad", b"esd", b"ct")
    msg = MLSMessage(pm)
    assert MLSMessage.decode(msg.encode()).private_message == pm
    bad = bytearray(pm.encode())
    bad[2 + 8] = 4
    with pytest.raises(DecodeError, match="ContentType"):
        PrivateMessage.decode(bytes(bad))
    sd = SenderData(1, 2, b"abcd")
    assert sd.encode() == b"\x00\x00\x00\x01\x00\x00\x00\x02abcd"
    assert SenderData.decode(sd.encode()) == sd
    assert SenderDataAAD(b"g", 3, ContentType.COMMIT).encode() == b"\x01g" + (3).to_bytes(8, "big") + b"\x03"
    pca = PrivateContentAAD(b"g", 3, ContentType.PROPOSAL, b"a")
    assert pca.encode() == b"\x01g" + (3).to_bytes(8, "big") + b"\x02\x01a"


def test_group_info_welcome_secrets() -> None:
    gi = GroupInfo(samples.group_context(), (Extension(4, b"\x01x"),), b"tag", 3, b"sig")
    data = gi.encode()
    assert GroupInfo.decode(data) == gi
    assert group_info_tbs(gi) == data[:-4] and gi.tbs() == data[:-4]
    assert MLSMessage.decode(MLSMessage(gi).encode()).group_info == gi
    gs = GroupSecrets(b"joiner", PathSecret(b"ps"), (PreSharedKeyID.external(b"i", b"n"),))
    assert GroupSecrets.decode(gs.encode()) == gs
    assert GroupSecrets.decode(GroupSecrets(b"j", None, ()).encode()).path_secret is None
    w = Welcome(1, (EncryptedGroupSecrets(b"ref", HPKECiphertext(b"k", b"c")),), b"egi")
    assert MLSMessage.decode(MLSMessage(w).encode()).welcome == w
    kp = samples.key_package()
    assert MLSMessage.decode(MLSMessage(kp).encode()).key_package == kp


@pytest.mark.parametrize("wire_format", [0, 6, 0xFFFF])
def test_unknown_wire_format_and_version(wire_format: int) -> None:
    with pytest.raises(DecodeError, match="WireFormat"):
        MLSMessage.decode(b"\x00\x01" + wire_format.to_bytes(2, "big"))
    with pytest.raises(DecodeError, match="ProtocolVersion"):
        MLSMessage.decode(b"\x00\x02\x00\x01")


def test_well_known_extensions() -> None:
    rc = RequiredCapabilities((5,), (ProposalType.REINIT,), (CredentialType.X509, 0xF000))
    ext = make_required_capabilities_extension(rc)
    assert ext.extension_type == ExtensionType.REQUIRED_CAPABILITIES
    assert parse_required_capabilities(ext) == rc
    pub = make_external_pub_extension(b"pub")
    assert pub.extension_data == b"\x03pub" and parse_external_pub(pub) == b"pub"
    senders = (
        ExternalSender(b"sk", Credential.basic(b"ds")),
        ExternalSender(b"sk2", Credential.custom(9, b"")),
    )
    es = make_external_senders_extension(senders)
    assert parse_external_senders(es) == senders
    assert find_extension([pub, es], ExtensionType.EXTERNAL_SENDERS) is es
    assert find_extension([pub], ExtensionType.APPLICATION_ID) is None
    with pytest.raises(DecodeError):
        parse_external_pub(Extension(ExtensionType.EXTERNAL_PUB, b"\x03pu"))


def test_trailing_bytes_and_nested_reader() -> None:
    kp = samples.key_package()
    with pytest.raises(DecodeError, match="trailing"):
        KeyPackage.decode(kp.encode() + b"\x00")
    r = Reader(kp.encode() + b"\x07")
    assert KeyPackage.read(r) == kp and r.remaining() == 1
    assert int(ProtocolVersion.MLS10) == 1
