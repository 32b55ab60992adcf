"""tree-math.json: array-based tree relations (RFC 9420 Appendix C)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phx.mls import tree_math as tm

SUITE_KEY = None


def _opt(f: Callable[[int], int], x: int) -> int | None:
    try:
        return f(x)
    except ValueError:
        return None


def run(entry: dict[str, Any]) -> None:
    n = int(entry["n_leaves"])
    width = tm.node_width(n)
    assert width == int(entry["n_nodes"]), "n_nodes"
    assert tm.root(n) == int(entry["root"]), "root"
    for name, f in (
        ("left", tm.left),
        ("right", tm.right),
        ("parent", lambda x: tm.parent(x, n)),
        ("sibling", lambda x: tm.sibling(x, n)),
    ):
        expected = entry[name]
        assert len(expected) == width, f"{name}: {len(expected)} entries for {width} nodes"
        for i in range(width):
            assert _opt(f, i) == expected[i], f"{name}[{i}]"
