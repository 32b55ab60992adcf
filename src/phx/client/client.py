"""The client library's entry point: :class:`PhxClient`, one object per client home directory.

::

    async with PhxClient.open(Path("alice"), ca_file=Path("dev/ca.pem"), hosts={...}) as alice:
        await alice.register("alice@a.test", b"password")
        request = await alice.connect("bob@b.test")
        ...
        for event in await alice.sync():
            print(event.kind, event.sender, event.text)

Where to reach homeservers (a CA file, resolver overrides, plain HTTP for tests) is remembered in the
home directory, so later opens need no network arguments. Every method is one user-level flow; see
:mod:`.account`, :mod:`.connections`, :mod:`.groups` and :mod:`.sync` for the steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from phx.config import HostPort

from . import account, aliases, connections, groups
from .session import Event, Session, wall_clock
from .state import ClientState, Contact, GroupRow, Identity, MessageRow, RequestRow
from .sync import sync
from .transport import Transport, parse_host_port

__all__ = ["NetworkSettings", "PhxClient"]

_NETWORK = "network"


class NetworkSettings:
    """How this client reaches homeservers; stored in the home directory."""

    def __init__(
        self, ca_file: Path | None = None, hosts: Mapping[str, str] | None = None, plain_http: bool = False
    ) -> None:
        self.ca_file = ca_file
        self.hosts = dict(hosts or {})
        self.plain_http = plain_http

    def to_json(self) -> bytes:
        data = {
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "hosts": self.hosts,
            "plain_http": self.plain_http,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NetworkSettings:
        data = json.loads(raw)
        ca = data.get("ca_file")
        return cls(Path(ca) if ca else None, data.get("hosts") or {}, bool(data.get("plain_http")))

    def overrides(self) -> dict[str, HostPort]:
        return {host: parse_host_port(target) for host, target in self.hosts.items()}


class PhxClient:
    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        ca_file: Path | None = None,
        hosts: Mapping[str, str] | None = None,
        plain_http: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], int] = wall_clock,
    ) -> PhxClient:
        """Open (or create) the client in ``home``; network arguments given here replace stored ones."""
        state = ClientState(home)
        raw = state.get(_NETWORK)
        settings = NetworkSettings.from_json(raw) if raw is not None else NetworkSettings()
        if ca_file is not None:
            settings.ca_file = ca_file.resolve()
        if hosts:
            settings.hosts.update(hosts)
        if plain_http is not None:
            settings.plain_http = plain_http
        with state.tx() as c:
            state.put(c, _NETWORK, settings.to_json())
        net = Transport(
            settings.overrides(),
            ca_file=settings.ca_file,
            plain_http=settings.plain_http,
            transport=transport,
        )
        return cls(Session(state, net, clock=clock))

    async def aclose(self) -> None:
        await self.session.transport.aclose()
        self.session.state.close()

    async def __aenter__(self) -> PhxClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- account -------------------------------------------------------------------------------------

    async def register(self, address: str, password: bytes) -> Identity:
        return await account.register(self.session, address, password)

    def whoami(self) -> dict[str, object]:
        return account.whoami(self.session)

    async def delete_account(self, password: bytes) -> None:
        await account.delete_account(self.session, password)

    # --- connections ---------------------------------------------------------------------------------

    async def connect(self, user: str) -> RequestRow:
        return await connections.connect(self.session, user)

    async def connect_alias(self, alias: str) -> RequestRow:
        return await aliases.connect_alias(self.session, alias)

    async def add_alias(self, alias: str) -> str:
        return (await aliases.add_alias(self.session, alias)).alias

    async def remove_alias(self, alias: str) -> None:
        await aliases.remove_alias(self.session, alias)

    def aliases(self) -> list[str]:
        return aliases.list_aliases(self.session)

    def requests(self, *, pending_only: bool = True) -> list[connections.RequestView]:
        return connections.list_requests(self.session, pending_only=pending_only)

    async def accept(self, request_id: int) -> Contact:
        return await connections.accept(self.session, request_id)

    async def reject(self, request_id: int) -> None:
        await connections.reject(self.session, request_id)

    def contacts(self) -> list[connections.ContactView]:
        return connections.list_contacts(self.session)

    async def disconnect(self, user: str) -> None:
        await connections.disconnect(self.session, user)

    # --- groups --------------------------------------------------------------------------------------

    async def create_group(self, name: str) -> GroupRow:
        return await groups.create_group(self.session, name)

    async def invite(self, group: str, user: str) -> GroupRow:
        return await groups.invite(self.session, group, user)

    async def remove(self, group: str, user: str) -> GroupRow:
        return await groups.remove(self.session, group, user)

    async def leave(self, group: str) -> None:
        await groups.leave(self.session, group)

    async def delete_group(self, group: str) -> None:
        await groups.delete_group(self.session, group)

    def groups(self) -> list[groups.GroupView]:
        return groups.list_groups(self.session)

    async def send(self, group: str, text: str) -> GroupRow:
        return await groups.send_text(self.session, group, text)

    def messages(self, group: str | None = None) -> list[MessageRow]:
        gid = None if group is None else self.session.find_group(group).group_id
        return self.session.state.messages(gid)

    # --- sync ----------------------------------------------------------------------------------------

    async def sync(self) -> list[Event]:
        return await sync(self.session)

    def label(self, user_id: object) -> str:
        from phx.identifiers import UserId

        assert isinstance(user_id, UserId)
        return self.session.label(user_id)
