"""The Phoenix client library (typed, asyncio): registration, connections, groups, messages, sync.

Start with :class:`~phx.client.client.PhxClient`. The modules underneath:

* :mod:`.transport` / :mod:`.api` — HTTP to any homeserver's services, one typed method per endpoint;
* :mod:`.state` — the SQLite state under the home directory;
* :mod:`.trust` — Privacy Pass tokens and AS credentials per homeserver, cached;
* :mod:`.wire` — what clients exchange with each other (leaf credentials, welcome attribution, …);
* :mod:`.account`, :mod:`.connections`, :mod:`.groups`, :mod:`.sync` — the flows.
"""

from __future__ import annotations

from .client import NetworkSettings, PhxClient
from .session import ClientError, Event
from .transport import ServiceError

__all__ = ["ClientError", "Event", "NetworkSettings", "PhxClient", "ServiceError"]
