"""Federation policy: which homeserver domains we talk to, in both directions.

Two homeservers federate only if both configurations permit it (book: general_concepts/federation.md), so
each side enforces its own policy on what it sends and on what it accepts. Checks are explicit and loud:
an outbound refusal raises :class:`~phx.errors.PolicyDenied` to the caller (the DS sees a clear 403, the
fan-out is not silently thinned), an inbound refusal answers the peer 403 ``policy_denied``.
"""

from __future__ import annotations

from dataclasses import dataclass

from phx.config import FederationConfig
from phx.errors import PolicyDenied
from phx.identifiers import Fqdn

__all__ = ["FederationPolicy"]


@dataclass(frozen=True, slots=True)
class FederationPolicy:
    home: Fqdn
    allowlist_mode: bool
    allowlist: frozenset[Fqdn]
    blocklist: frozenset[Fqdn]

    @classmethod
    def from_config(cls, home: Fqdn, config: FederationConfig) -> FederationPolicy:
        return cls(home, config.policy == "allowlist", config.allowlist, config.blocklist)

    def permits(self, domain: Fqdn) -> bool:
        """Whether ``domain`` is a peer we federate with. Our own domain is not a peer: federation
        traffic claiming to come from (or go to) ourselves is refused, which also stops loops."""
        if domain == self.home:
            return False
        if self.allowlist_mode:
            return domain in self.allowlist
        return domain not in self.blocklist

    def check_outbound(self, domain: Fqdn) -> None:
        if not self.permits(domain):
            raise PolicyDenied(f"federation with {domain} is not permitted by this homeserver's policy")

    def check_inbound(self, domain: Fqdn) -> None:
        if not self.permits(domain):
            raise PolicyDenied(f"{self.home} does not accept federation traffic from {domain}")
