"""Every RFC 9420 wire struct, re-exported: ``from phx.mls.messages import LeafNode, UpdatePath, ...``.

Modules: ``common`` (enums, Credential, Capabilities, Extension, ...), ``leaf`` (LeafNode, KeyPackage),
``tree_structs`` (ParentNode, Node, ratchet tree, UpdatePath, GroupContext), ``proposals`` (Proposal
bodies, ProposalOrRef, Commit), ``framing_structs`` (Sender, FramedContent, PublicMessage,
PrivateMessage, ...), ``group_structs`` (GroupInfo, GroupSecrets, Welcome, PSKLabel), ``extensions``
(well-known extension data), ``mls_message`` (MLSMessage), ``refs`` (KeyPackageRef, ProposalRef).
"""

from phx.mls.messages.common import *  # noqa: F403
from phx.mls.messages.common import __all__ as _common_all
from phx.mls.messages.extensions import *  # noqa: F403
from phx.mls.messages.extensions import __all__ as _extensions_all
from phx.mls.messages.framing_structs import *  # noqa: F403
from phx.mls.messages.framing_structs import __all__ as _framing_all
from phx.mls.messages.group_structs import *  # noqa: F403
from phx.mls.messages.group_structs import __all__ as _group_all
from phx.mls.messages.leaf import *  # noqa: F403
from phx.mls.messages.leaf import __all__ as _leaf_all
from phx.mls.messages.mls_message import *  # noqa: F403
from phx.mls.messages.mls_message import __all__ as _mls_message_all
from phx.mls.messages.proposals import *  # noqa: F403
from phx.mls.messages.proposals import __all__ as _proposals_all
from phx.mls.messages.refs import *  # noqa: F403
from phx.mls.messages.refs import __all__ as _refs_all
from phx.mls.messages.tree_structs import *  # noqa: F403
from phx.mls.messages.tree_structs import __all__ as _tree_all

__all__ = [
    *_common_all,
    *_extensions_all,
    *_framing_all,
    *_group_all,
    *_leaf_all,
    *_mls_message_all,
    *_proposals_all,
    *_refs_all,
    *_tree_all,
]
