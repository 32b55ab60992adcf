"""Every RFC 9420 wire struct, re-exported: ``from phx.mls.messages import LeafNode, UpdatePath, ...``."""

from phx.mls.messages.common import *  # noqa: F403
from phx.mls.messages.common import __all__ as _common_all
from phx.mls.messages.leaf import *  # noqa: F403
from phx.mls.messages.leaf import __all__ as _leaf_all
from phx.mls.messages.refs import *  # noqa: F403
from phx.mls.messages.refs import __all__ as _refs_all
from phx.mls.messages.tree_structs import *  # noqa: F403
from phx.mls.messages.tree_structs import __all__ as _tree_all

__all__ = [*_common_all, *_leaf_all, *_refs_all, *_tree_all]
