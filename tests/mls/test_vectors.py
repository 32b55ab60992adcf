"""The official MLS vectors, one test per upstream file that has a runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from phx.mls.vectors import load_runner, run_file
from tests.conftest import MLS_VECTORS

FILES = sorted(p.name for p in MLS_VECTORS.glob("*.json")) if MLS_VECTORS.is_dir() else []


@pytest.mark.parametrize("name", [f for f in FILES if load_runner(f) is not None])
def test_vector_file(name: str, mls_vectors_dir: Path) -> None:
    result = run_file(mls_vectors_dir / name)
    assert result.failures == []
    assert result.failed == 0
    assert result.passed > 0
