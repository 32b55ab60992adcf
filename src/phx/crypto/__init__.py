"""Cryptographic layer: MLS cipher suites, HPKE, labeled signatures and encryption."""

from phx.crypto.suite import (
    MLS_PREFIX,
    PHX_PREFIX,
    SUITE_1,
    CipherSuite,
    Ed25519,
    HpkeError,
    UnsupportedCipherSuite,
    suite,
    supported_suites,
)

__all__ = [
    "MLS_PREFIX",
    "PHX_PREFIX",
    "SUITE_1",
    "CipherSuite",
    "Ed25519",
    "HpkeError",
    "UnsupportedCipherSuite",
    "suite",
    "supported_suites",
]
