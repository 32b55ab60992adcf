from __future__ import annotations

import pytest

from phx.mls import tree_math as tm


def _semantic_ancestor(x: int, y: int, n: int) -> int:
    dx = {x, *tm.direct_path(x, n)}
    dy = {y, *tm.direct_path(y, n)}
    return min(dx & dy, key=tm.level)


def test_eight_leaf_tree_from_rfc_figure() -> None:
    assert tm.node_width(8) == 15
    assert tm.root(8) == 7
    assert tm.level(7) == 3 and tm.level(3) == 2 and tm.level(4) == 0
    assert tm.direct_path(0, 8) == [1, 3, 7]
    assert tm.copath(0, 8) == [2, 5, 11]
    assert tm.direct_path(7, 8) == [] and tm.copath(7, 8) == []
    assert tm.left(7) == 3 and tm.right(7) == 11
    assert tm.parent(11, 8) == 7 and tm.sibling(11, 8) == 3


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_relations_agree_with_definitions(n: int) -> None:
    w = tm.node_width(n)
    r = tm.root(n)
    for x in range(w):
        path = tm.direct_path(x, n)
        # direct path is the iterated parent
        walk, y = [], x
        while y != r:
            y = tm.parent(y, n)
            walk.append(y)
        assert path == walk
        assert len(tm.copath(x, n)) == len(path)
        for c, p in zip(tm.copath(x, n), path, strict=True):
            assert tm.parent(c, n) == p
        if x != r:
            p = tm.parent(x, n)
            assert x in (tm.left(p), tm.right(p))
            assert tm.sibling(tm.sibling(x, n), n) == x
        for y in range(w):
            assert tm.common_ancestor(x, y) == _semantic_ancestor(x, y, n)


def test_leaf_node_conversion() -> None:
    assert tm.leaf_to_node(5) == 10
    assert tm.node_to_leaf(10) == 5
    with pytest.raises(ValueError):
        tm.node_to_leaf(3)


def test_errors() -> None:
    with pytest.raises(ValueError):
        tm.left(4)
    with pytest.raises(ValueError):
        tm.right(0)
    with pytest.raises(ValueError):
        tm.parent(7, 8)
    with pytest.raises(ValueError):
        tm.parent(15, 8)
    with pytest.raises(ValueError):
        tm.direct_path(0, 3)
