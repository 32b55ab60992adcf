"""Shared fixtures: paths to the reference material beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.db"]

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MLS_VECTORS = Path(os.environ.get("MLS_TEST_VECTORS_DIR", SHARED / "mls-test-vectors"))


@pytest.fixture(scope="session")
def mls_vectors_dir() -> Path:
    if not MLS_VECTORS.is_dir():
        pytest.skip(f"MLS test vectors not found at {MLS_VECTORS}")
    return MLS_VECTORS
