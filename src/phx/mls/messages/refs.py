"""KeyPackageRef and ProposalRef (RFC 9420 §5.2)."""

from __future__ import annotations

from phx.crypto import CipherSuite

__all__ = ["KEY_PACKAGE_REF_LABEL", "PROPOSAL_REF_LABEL", "make_key_package_ref", "make_proposal_ref"]

# RefHash labels carry the "MLS 1.0 " prefix literally (unlike the *WithLabel helpers).
KEY_PACKAGE_REF_LABEL = b"MLS 1.0 KeyPackage Reference"
PROPOSAL_REF_LABEL = b"MLS 1.0 Proposal Reference"


def make_key_package_ref(cs: CipherSuite, key_package: bytes) -> bytes:
    """``RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)`` over the encoded KeyPackage."""
    return cs.ref_hash(KEY_PACKAGE_REF_LABEL, key_package)


def make_proposal_ref(cs: CipherSuite, authenticated_content: bytes) -> bytes:
    """``RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)`` over the encoded content."""
    return cs.ref_hash(PROPOSAL_REF_LABEL, authenticated_content)
