from __future__ import annotations

import pytest

from phx.config import FederationConfig, parse_config
from phx.errors import PolicyDenied
from phx.federation.policy import FederationPolicy
from phx.identifiers import Fqdn

HOME = Fqdn("a.test")
B, C, D = Fqdn("b.test"), Fqdn("c.test"), Fqdn("d.test")


def test_open_policy_refuses_only_the_blocklist() -> None:
    policy = FederationPolicy.from_config(HOME, FederationConfig(blocklist=frozenset({C})))
    assert policy.permits(B) and policy.permits(D)
    assert not policy.permits(C)
    policy.check_outbound(B)
    with pytest.raises(PolicyDenied, match="c.test"):
        policy.check_outbound(C)
    with pytest.raises(PolicyDenied, match="c.test"):
        policy.check_inbound(C)


def test_allowlist_policy_accepts_only_the_list() -> None:
    config = parse_config(
        '[server]\ndomain = "a.test"\nplain_http = true\n[federation]\npolicy = "allowlist"\n'
        'allowlist = ["b.test"]\n'
    )
    policy = FederationPolicy.from_config(HOME, config.federation)
    assert policy.permits(B)
    assert not policy.permits(C)
    with pytest.raises(PolicyDenied):
        policy.check_inbound(D)


def test_empty_allowlist_federates_with_nobody() -> None:
    policy = FederationPolicy.from_config(HOME, FederationConfig(policy="allowlist"))
    assert not any(policy.permits(d) for d in (B, C, D))


def test_own_domain_is_never_a_peer() -> None:
    policy = FederationPolicy.from_config(HOME, FederationConfig())
    assert not policy.permits(HOME)
    with pytest.raises(PolicyDenied):
        policy.check_inbound(HOME)
