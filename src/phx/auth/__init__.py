"""The Authentication Service (book: spec/authentication_service.md).

* :mod:`.messages` — wire structs with the book's names, the :class:`~.messages.AsRequest` envelope.
* :mod:`.core` — the operation table (authentication mode, token requirement) and the pure rules.
* :mod:`.keys` — AS credentials (roots, intermediates), rotation, revocation, OPAQUE setup; the
  :class:`~.keys.AsCredentialSource` interface federation implements for remote domains.
* :mod:`.opaque` — OPAQUE via ``opaque_ke_py`` (server and client steps).
* :mod:`.store` — the state on SQLite or PostgreSQL.
* :mod:`.service` — :class:`~.service.AsService`, one method per operation; :mod:`.routes` — Starlette.
* :mod:`.client` — client-side envelopes and signed packages.

Privacy Pass issuance uses :mod:`phx.privacypass`; direct and alias queues use :mod:`phx.queues`.
"""

from __future__ import annotations

from .keys import AsCredentialSet, AsCredentialSource, AsKeyStore
from .service import AsService

__all__ = ["AsCredentialSet", "AsCredentialSource", "AsKeyStore", "AsService"]
