"""The Delivery Service (book: delivery_service.md): MLS groups with encrypted state, validated without
group secrets, fanned out to the QS.

* :mod:`.messages` — the book's wire structs (and where we filled gaps);
* :mod:`.state` — the group state (roster + cold section) and its encryption at rest;
* :mod:`.core` / :mod:`.operations` — the rules, pure: state + request + now -> state + outputs;
* :mod:`.store` — SQL for SQLite and PostgreSQL; :mod:`.service` — the async service;
* :mod:`.fanout` — where fan-outs go (the QS in process or over HTTP); :mod:`.routes` — HTTP.
"""

from .fanout import FanOutSink, HttpQsSink, LocalQsSink
from .messages import Operation
from .service import DsService, TokenRedeemer

__all__ = ["DsService", "FanOutSink", "HttpQsSink", "LocalQsSink", "Operation", "TokenRedeemer"]
