"""MLS benchmarks: one command, prints medians.

    .venv/bin/python benchmarks/bench_mls.py [--repeat N] [--quick] [--profile NAME]

Large groups are built directly (not through thousands of real commits): every member gets a real,
signed leaf, then "simulated commits" from every odd leaf, left to right, fill every parent node with a
fresh key and a correct parent-hash chain, exactly as real commits would leave the tree. The result is a
fully populated tree that passes the joiner's full validation (§12.4.3.1). Only the last simulated
commit (of the receiving member) uses real TreeKEM key derivation, since that member must hold the
private keys of its path; the other parent keys are random bytes (nobody decrypts to them). What is
timed is always the real processing code.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from phx.crypto import SUITE_1, CipherSuite  # noqa: E402
from phx.mls.group import Group  # noqa: E402
from phx.mls.group_state import EpochState  # noqa: E402
from phx.mls.key_package import KeyPackageBundle, create_key_package  # noqa: E402
from phx.mls.key_schedule import derive_epoch_secrets  # noqa: E402
from phx.mls.leaf_validation import MemberSupport  # noqa: E402
from phx.mls.messages import (  # noqa: E402
    Capabilities,
    Credential,
    GroupContext,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    MLSMessage,
    ParentNode,
    ProtocolVersion,
)
from phx.mls.public_group import PublicGroup  # noqa: E402
from phx.mls.transcript import interim_transcript_hash  # noqa: E402
from phx.mls.tree import RatchetTree  # noqa: E402
from phx.mls.treekem import PrivateTree, commit_leaf_node, generate_update_path  # noqa: E402

CS = SUITE_1
NOW = 1_700_000_000
GROUP_ID = b"bench group id 0123456789abcdef"
CAPS = Capabilities(cipher_suites=(CS.suite_id,), credentials=(1,))


@dataclass
class BigGroup:
    """A large group's shared public state and the keys of two members: 0 (committer), n-1 (receiver)."""

    cs: CipherSuite
    tree: RatchetTree
    context: GroupContext
    interim: bytes
    tag: bytes
    init_secret: bytes
    sig_privs: dict[int, bytes]
    privates: dict[int, PrivateTree]

    def member(self, i: int) -> Group:
        """A client Group object for member ``i`` (fresh: its own tree copy and epoch secrets)."""
        secrets = derive_epoch_secrets(self.cs, self.init_secret, None, self.context.encode())
        tree = self.tree.copy()
        state = EpochState(
            self.context,
            tree,
            self.privates[i].copy(),
            secrets,
            self.interim,
            self.tag,
            MemberSupport.of_tree(tree),
        )
        return Group(self.cs, state, self.sig_privs[i])

    def public(self) -> PublicGroup:
        return PublicGroup(self.cs, self.tree.copy(), self.context, self.interim, self.tag)


def _leaf(cs: CipherSuite, name: bytes, sig_priv: bytes, sig_pub: bytes, enc_pub: bytes) -> LeafNode:
    unsigned = LeafNode(
        enc_pub,
        sig_pub,
        Credential.basic(name),
        CAPS,
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        None,
        (),
        b"",
    )
    return unsigned.with_signature(cs.sign_with_label(sig_priv, b"LeafNodeTBS", unsigned.tbs()))


def build_big_group(n: int, cs: CipherSuite = CS) -> BigGroup:
    assert n >= 2
    sig_keys = [cs.generate_signature_key_pair() for _ in range(n)]
    enc0_priv, enc0_pub = cs.generate_hpke_key_pair()
    leaves: list[LeafNode | ParentNode | None] = []
    for i, (sp, pk) in enumerate(sig_keys):
        enc = enc0_pub if i == 0 else cs.generate_hpke_key_pair()[1]
        leaves += [_leaf(cs, b"member %d" % i, sp, pk, enc), None]
    tree = RatchetTree(cs, leaves[:-1])
    receiver = n - 1 if n % 2 == 0 else n - 2
    privates = {0: PrivateTree(cs, 0, enc0_priv)}
    for i in range(1, n, 2):
        sp, _ = sig_keys[i]
        base = tree.require_leaf(i)
        if i == receiver:

            def make_leaf(
                enc: bytes, ph: bytes, base: LeafNode = base, sp: bytes = sp, i: int = i
            ) -> LeafNode:
                return commit_leaf_node(cs, base, enc, ph, GROUP_ID, i, sp)

            pending = generate_update_path(tree, i, make_leaf)
            privates[i] = pending.private
            continue
        tree.blank_direct_path(i)
        for p, _ in tree.filtered_path_with_copath(i):
            tree.set_node(p, ParentNode(os.urandom(32), b"", ()))
        ph = tree.set_path_parent_hashes(i)
        tree.set_leaf(i, commit_leaf_node(cs, base, os.urandom(32), ph, GROUP_ID, i, sp))
    tree.truncate()
    confirmed = os.urandom(32)
    ctx = GroupContext(ProtocolVersion.MLS10, cs.suite_id, GROUP_ID, 1000, tree.tree_hash(), confirmed, ())
    init_secret = os.urandom(cs.nh)
    secrets = derive_epoch_secrets(cs, init_secret, None, ctx.encode())
    tag = secrets.confirmation_tag(confirmed)
    interim = interim_transcript_hash(cs, confirmed, tag)
    sig_privs = {0: sig_keys[0][0], receiver: sig_keys[receiver][0]}
    return BigGroup(cs, tree, ctx, interim, tag, init_secret, sig_privs, privates)


# --- timing ---------------------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn() if arg is None else fn(arg)  # type: ignore[call-arg]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name: str, seconds: float, goal: float | None = None) -> None:
    shown = f"{seconds * 1000:10.2f} ms"
    verdict = ""
    if goal is not None:
        verdict = f"   goal <= {goal * 1000:.0f} ms: {'OK' if seconds <= goal else 'MISSED'}"
    print(f"{name:<58}{shown}{verdict}", flush=True)


def key_packages(count: int) -> list[KeyPackageBundle]:
    out = []
    for i in range(count):
        priv, _ = CS.generate_signature_key_pair()
        out.append(create_key_package(CS, Credential.basic(b"joiner %d" % i), priv, now=NOW))
    return out


# --- benchmarks -----------------------------------------------------------------------------------------


def bench_add_999(repeat: int) -> None:
    priv, _ = CS.generate_signature_key_pair()
    bundles = key_packages(999)
    kps = [b.key_package for b in bundles]
    creator = Group.create(CS, Credential.basic(b"creator"), priv, now=NOW)
    gi = creator.group_info(ratchet_tree=True).group_info
    assert gi is not None
    pg = PublicGroup.from_group_info(gi, None, NOW)

    def commit() -> None:
        creator.clear_pending_commit()
        creator.commit(now=NOW, add=kps)

    report("client: one commit adding 999 members to a group of 1", median_time(commit, repeat))
    creator.clear_pending_commit()
    msg = creator.commit(now=NOW, add=kps).commit
    report("DS: process that 999-add commit", median_time(lambda: pg.process(msg, NOW), repeat))


def bench_update(n: int, repeat: int, goal_ds: float | None) -> BigGroup:
    t0 = time.perf_counter()
    big = build_big_group(n)
    print(f"  (built a {n}-member tree in {time.perf_counter() - t0:.1f} s)", flush=True)
    committer = big.member(0)
    msg = committer.commit(now=NOW, path=True).commit
    pg = big.public()
    pg.tree.tree_hash()  # a live DS group has its hash cache warm
    out = pg.process(msg, NOW)
    assert out.new_context.epoch == big.context.epoch + 1  # type: ignore[union-attr]
    report(
        f"DS: process an update commit (path), {n} members",
        median_time(lambda: pg.process(msg, NOW), repeat),
        goal_ds,
    )
    data = pg.to_bytes()
    report(
        f"DS: restore state ({len(data) // 1024} KiB) + process, {n} members",
        median_time(lambda: PublicGroup.from_bytes(data).process(msg, NOW), max(3, repeat // 3)),
    )
    receiver = max(big.privates)

    def receive(g: Group) -> None:
        g.process(msg, now=NOW)

    def fresh() -> Group:
        g = big.member(receiver)
        g.tree.tree_hash()
        return g

    report(f"client: process the same commit, {n} members", median_time(receive, repeat, fresh))  # type: ignore[arg-type]
    return big


def bench_join(n: int, repeat: int) -> None:
    big = build_big_group(n - 1)
    committer = big.member(0)
    bundle = key_packages(1)[0]
    result = committer.commit(now=NOW, add=[bundle.key_package], ratchet_tree_in_welcome=True)
    welcome = result.welcome
    assert welcome is not None
    joined = Group.join_from_welcome(welcome, bundle, now=NOW)
    assert joined.member_count == n
    report(
        f"client: join from Welcome, {n} members",
        median_time(lambda: Group.join_from_welcome(welcome, bundle, now=NOW), repeat),
        0.5,
    )


def bench_app_messages(count: int, repeat: int) -> None:
    a_priv, _ = CS.generate_signature_key_pair()
    alice = Group.create(CS, Credential.basic(b"alice"), a_priv, now=NOW)
    bob_bundle = key_packages(1)[0]
    res = alice.commit(now=NOW, add=[bob_bundle.key_package])
    alice.merge_pending_commit()
    assert res.welcome is not None
    bob = Group.join_from_welcome(res.welcome, bob_bundle, now=NOW)
    payload = b"x" * 100

    def run() -> None:
        for _ in range(count):
            bob.process(alice.send(payload), now=NOW)

    t = median_time(run, repeat)
    report(f"{count} application messages protect + unprotect", t)
    print(f"{'  per message':<58}{t / count * 1e6:10.1f} us")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="skip the 10,000-member group")
    ap.add_argument("--profile", choices=["add999", "ds1k", "ds10k", "client10k", "join1k", "app"])
    args = ap.parse_args(argv)
    if args.profile:
        profile(args.profile)
        return
    r = args.repeat
    print(f"MLS benchmarks (suite {CS.name}, medians of {r} runs)")
    bench_add_999(max(3, r // 2))
    bench_update(1000, r, 0.010)
    if not args.quick:
        bench_update(10_000, r, 0.030)
    bench_join(1000, r)
    bench_app_messages(10_000, max(3, r // 2))


def profile(which: str) -> None:
    prof = cProfile.Profile()
    if which in ("ds1k", "ds10k", "client10k"):
        n = 1000 if which == "ds1k" else 10_000
        big = build_big_group(n)
        msg: MLSMessage = big.member(0).commit(now=NOW, path=True).commit
        if which == "client10k":
            g = big.member(max(big.privates))
            g.tree.tree_hash()
            prof.enable()
            g.process(msg, now=NOW)
        else:
            pg = big.public()
            pg.tree.tree_hash()
            prof.enable()
            for _ in range(20):
                pg.process(msg, NOW)
    elif which == "join1k":
        big = build_big_group(999)
        bundle = key_packages(1)[0]
        res = big.member(0).commit(now=NOW, add=[bundle.key_package], ratchet_tree_in_welcome=True)
        assert res.welcome is not None
        prof.enable()
        Group.join_from_welcome(res.welcome, bundle, now=NOW)
    elif which == "add999":
        priv, _ = CS.generate_signature_key_pair()
        kps = [b.key_package for b in key_packages(999)]
        g = Group.create(CS, Credential.basic(b"c"), priv, now=NOW)
        prof.enable()
        g.commit(now=NOW, add=kps)
    else:
        prof.enable()
        bench_app_messages(2000, 1)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
