"""Array-based (left-balanced, complete) binary tree math (RFC 9420 Appendix C).

Nodes are numbered in-order: leaves at even indices (leaf ``i`` is node ``2*i``), parents at odd
indices. RFC 9420 trees always have a power-of-two number of leaves (the tree doubles when it grows
and halves when its right half is blank), so every function takes ``n_leaves`` and relies on it
being a power of two; ``n_leaves`` is validated only where a wrong value could loop forever.

Everything here is pure integer arithmetic on node indices; it knows nothing about node contents.
"""

from __future__ import annotations

__all__ = [
    "common_ancestor",
    "copath",
    "direct_path",
    "is_leaf",
    "leaf_to_node",
    "left",
    "level",
    "log2",
    "node_to_leaf",
    "node_width",
    "parent",
    "right",
    "root",
    "sibling",
]


def log2(x: int) -> int:
    """The exponent of the largest power of 2 not above ``x`` (0 for ``x == 0``)."""
    return x.bit_length() - 1 if x > 0 else 0


def level(x: int) -> int:
    """Leaves are level 0; a parent is one above its children (the number of trailing 1 bits)."""
    return (~x & (x + 1)).bit_length() - 1


def is_leaf(x: int) -> bool:
    return x & 1 == 0


def leaf_to_node(leaf_index: int) -> int:
    return 2 * leaf_index


def node_to_leaf(x: int) -> int:
    if x & 1:
        raise ValueError(f"node {x} is not a leaf")
    return x >> 1


def node_width(n_leaves: int) -> int:
    """Number of nodes of a tree with ``n_leaves`` leaves."""
    return 0 if n_leaves == 0 else 2 * (n_leaves - 1) + 1


def root(n_leaves: int) -> int:
    return (1 << log2(node_width(n_leaves))) - 1


def left(x: int) -> int:
    k = level(x)
    if k == 0:
        raise ValueError(f"leaf node {x} has no children")
    return x ^ (1 << (k - 1))


def right(x: int) -> int:
    k = level(x)
    if k == 0:
        raise ValueError(f"leaf node {x} has no children")
    return x ^ (3 << (k - 1))


def _check(x: int, n_leaves: int) -> None:
    if n_leaves < 1 or n_leaves & (n_leaves - 1):
        raise ValueError(f"tree size {n_leaves} is not a power of two")
    if not 0 <= x < node_width(n_leaves):
        raise ValueError(f"node {x} is outside a tree of {n_leaves} leaves")


def parent(x: int, n_leaves: int) -> int:
    _check(x, n_leaves)
    if x == root(n_leaves):
        raise ValueError("the root node has no parent")
    k = level(x)
    b = (x >> (k + 1)) & 1
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    p = parent(x, n_leaves)
    return right(p) if x < p else left(p)


def direct_path(x: int, n_leaves: int) -> list[int]:
    """Ancestors of ``x`` from its parent up to the root (empty for the root)."""
    _check(x, n_leaves)
    r = root(n_leaves)
    out: list[int] = []
    # In a full tree the ancestors of x are x with its lowest 0 bits set one by one.
    k = level(x)
    while x != r:
        b = (x >> (k + 1)) & 1
        x = (x | (1 << k)) ^ (b << (k + 1))
        k += 1
        out.append(x)
    return out


def copath(x: int, n_leaves: int) -> list[int]:
    """Siblings of ``x`` and of each of its ancestors below the root, from the leaf up."""
    path = direct_path(x, n_leaves)
    if not path:
        return []
    chain = [x, *path[:-1]]
    out: list[int] = []
    for node, p in zip(chain, path, strict=True):
        out.append(right(p) if node < p else left(p))
    return out


def common_ancestor(x: int, y: int) -> int:
    """The lowest node whose subtree contains both ``x`` and ``y`` (``x`` itself if ``x == y``)."""
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    xn, yn, k = x, y, 0
    while xn != yn:
        xn, yn = xn >> 1, yn >> 1
        k += 1
    return (xn << k) + (1 << (k - 1)) - 1
