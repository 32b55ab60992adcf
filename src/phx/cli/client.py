"""``phx client --home DIR [--ca FILE] [--hosts FILE] [--json] COMMAND``: the command-line client.

Every command opens the client state in ``--home`` (created on first use), does one thing and exits;
the next command continues from the state the last one left. ``--ca``, ``--hosts`` and ``--resolve``
are remembered in the home directory. With ``--json`` every command prints JSON lines (``sync``: one
object per received message on stdout, other events as objects on stderr). Errors print one line and
exit with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from phx.client import ClientError, Event, PhxClient, ServiceError
from phx.errors import PhxError, Unavailable

__all__ = ["add_parser", "main", "run"]

Handler = Callable[[PhxClient, argparse.Namespace, "Output"], Awaitable[None]]


class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def item(self, data: dict[str, Any], text: str) -> None:
        print(json.dumps(data, sort_keys=True) if self.json else text, flush=True)

    def note(self, data: dict[str, Any], text: str) -> None:
        """A side event: stdout in text mode, stderr in JSON mode (stdout then carries only the results)."""
        if self.json:
            print(json.dumps(data, sort_keys=True), file=sys.stderr, flush=True)
        else:
            print(text, flush=True)


def read_password(args: argparse.Namespace, *, confirm: bool) -> bytes:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n").encode()
    if not sys.stdin.isatty():
        raise ClientError("no terminal to ask for the password: use --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise ClientError("the passwords do not match")
    return password.encode()


def read_hosts(path: Path) -> dict[str, str]:
    """A TOML file of ``"as.a.test" = "127.0.0.1:9443"`` lines (optionally under ``[hosts]``)."""
    data = tomllib.loads(path.read_text())
    table = data.get("hosts", data)
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ClientError(f'{path}: expected host = "address:port" entries')
    return {str(k): str(v) for k, v in table.items()}


# --- commands ----------------------------------------------------------------------------------------


async def _register(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    identity = await c.register(a.user, read_password(a, confirm=True))
    info = c.whoami()
    out.item(
        info,
        f"registered {info['user']} (client {identity.client_id})\nfingerprint {info.get('fingerprint')}",
    )


async def _whoami(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    info = c.whoami()
    lines = [f"{k}: {v}" for k, v in info.items()]
    out.item(info, "\n".join(lines))


async def _connect(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    request = await (c.connect_alias(a.user) if a.alias else c.connect(a.user))
    to = a.user if a.alias else c.label(request.user_id)
    out.item(
        {"id": request.id, "to": to, "status": request.status},
        f"connection request #{request.id} sent to {to}",
    )


async def _requests(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    views = [r for r in c.requests(pending_only=not a.all) if a.outgoing == (r.direction == "out")]
    for r in views:
        key = "to" if r.direction == "out" else "from"
        data = {"id": r.id, key: r.user, "status": r.status, "direction": r.direction}
        if r.fingerprint:
            data["fingerprint"] = r.fingerprint
        text = f"#{r.id} {key} {r.user} ({r.status})" + (
            f" fingerprint {r.fingerprint[:32]}" if r.fingerprint else ""
        )
        out.item(data, text)
    if not views and not out.json:
        print("no pending requests")


async def _accept(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    contact = await c.accept(a.id)
    who = c.label(contact.user_id)
    out.item({"id": a.id, "contact": who, "status": "accepted"}, f"accepted #{a.id}: {who} is now a contact")


async def _reject(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    await c.reject(a.id)
    out.item({"id": a.id, "status": "rejected"}, f"rejected #{a.id}")


async def _contacts(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    views = c.contacts()
    for v in views:
        state = "" if v.ready else " (waiting for keys: sync)"
        fps = ", ".join(f[:32] for f in v.fingerprints)
        out.item(
            {"user": v.user, "user_id": v.user_id, "ready": v.ready, "fingerprints": v.fingerprints},
            f"{v.user}{state}  fingerprint {fps}",
        )
    if not views and not out.json:
        print("no contacts")


async def _disconnect(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    await c.disconnect(a.user)
    out.item({"user": a.user, "status": "disconnected"}, f"{a.user} is no longer a contact")


async def _alias(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    if a.alias_command == "add":
        address = await c.add_alias(a.name)
        out.item({"alias": address, "status": "registered"}, f"registered the alias {address}")
    else:
        await c.remove_alias(a.name)
        out.item({"alias": a.name, "status": "deleted"}, f"deleted the alias {a.name}")


async def _aliases(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    names = c.aliases()
    for name in names:
        out.item({"alias": name}, name)
    if not names and not out.json:
        print("no aliases")


async def _group(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    if a.group_command == "create":
        row = await c.create_group(a.name)
        out.item({"group": row.name, "group_id": str(row.group_id)}, f"created {row.name!r} ({row.group_id})")
    elif a.group_command == "invite":
        row = await c.invite(a.group, a.user)
        out.item(
            {"group": row.name, "group_id": str(row.group_id), "invited": a.user},
            f"invited {a.user} to {row.name!r}",
        )
    elif a.group_command == "remove":
        row = await c.remove(a.group, a.user)
        out.item(
            {"group": row.name, "group_id": str(row.group_id), "removed": a.user},
            f"removed {a.user} from {row.name!r}",
        )
    elif a.group_command == "leave":
        await c.leave(a.group)
        out.item({"group": a.group, "status": "leaving"}, f"leaving {a.group!r}")
    elif a.group_command == "delete":
        await c.delete_group(a.group)
        out.item({"group": a.group, "status": "deleted"}, f"deleted {a.group!r}")


async def _groups(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    views = c.groups()
    for g in views:
        out.item(
            {
                "group": g.name,
                "group_id": str(g.group_id),
                "members": g.members,
                "status": g.status,
                "epoch": g.epoch,
            },
            f"{g.name}  ({g.group_id})  members: {', '.join(g.members)}"
            + ("  [leaving]" if g.status == "leaving" else ""),
        )
    if not views and not out.json:
        print("no groups")


async def _send(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    row = await c.send(a.group, a.text)
    out.item(
        {"group": row.name, "group_id": str(row.group_id), "text": a.text, "status": "sent"},
        f"sent to {row.name!r}",
    )


async def _messages(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    names = {str(g.group_id): g.name for g in c.groups()}
    for m in c.messages(a.group):
        sender = c.label(m.sender)
        group = names.get(str(m.group_id), str(m.group_id))
        out.item(
            {
                "group": group,
                "group_id": str(m.group_id),
                "sender": sender,
                "text": m.text,
                "sent_at": m.sent_at,
                "outgoing": m.outgoing,
            },
            f"[{group}] {sender}: {m.text}",
        )


def _event_text(e: Event) -> str:
    if e.kind == "message":
        return f"[{e.group}] {e.sender}: {e.text}"
    if e.kind == "request":
        return f"connection request #{e.request_id} from {e.sender} (accept with: accept {e.request_id})"
    if e.kind == "connected":
        return f"{e.sender} accepted your connection request"
    if e.kind == "ready":
        return f"{e.sender} sent its friendship keys: you can add each other to groups"
    if e.kind == "declined":
        return f"{e.sender} declined your connection request"
    if e.kind == "disconnected":
        return f"{e.sender} is no longer a contact"
    if e.kind == "joined":
        return f"{e.sender} added you to {e.group!r}"
    if e.kind == "added":
        return f"{e.sender} joined {e.group!r}"
    if e.kind in ("removed", "left") and not e.sender:
        return f"you are no longer in {e.group!r}"
    if e.kind == "removed":
        return f"{e.sender} left {e.group!r}"
    return f"{e.kind}: {e.text}"


async def _sync(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    events = await c.sync()
    deadline = time.monotonic() + a.wait
    while not events and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        events = await c.sync()
    for e in events:
        if e.kind == "message":
            data = {
                "group": e.group,
                "group_id": e.group_id,
                "sender": e.sender,
                "text": e.text,
                "sent_at": e.sent_at,
            }
            out.item(data, _event_text(e))
        else:
            out.note(e.as_dict(), _event_text(e))
    if not events and not out.json:
        print("nothing new")


async def _delete_account(c: PhxClient, a: argparse.Namespace, out: Output) -> None:
    who = c.whoami()["user"]
    await c.delete_account(read_password(a, confirm=False))
    out.item({"user": who, "status": "deleted"}, f"deleted the account {who} and this client's state")


COMMANDS: dict[str, Handler] = {
    "register": _register,
    "whoami": _whoami,
    "connect": _connect,
    "requests": _requests,
    "accept": _accept,
    "reject": _reject,
    "contacts": _contacts,
    "disconnect": _disconnect,
    "alias": _alias,
    "aliases": _aliases,
    "group": _group,
    "groups": _groups,
    "send": _send,
    "messages": _messages,
    "sync": _sync,
    "delete-account": _delete_account,
}


# --- parser ------------------------------------------------------------------------------------------


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--home", required=True, type=Path, metavar="DIR", help="the client's state directory"
    )
    parser.add_argument("--ca", type=Path, metavar="FILE", help="PEM CA bundle to verify homeservers with")
    parser.add_argument(
        "--hosts", type=Path, metavar="FILE", help='TOML file of "as.a.test" = "127.0.0.1:9443"'
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST=ADDR:PORT",
        help="connect to HOST at ADDR:PORT",
    )
    parser.add_argument(
        "--plain-http", action="store_true", default=None, help="(testing) plain HTTP, no TLS"
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON lines")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [json_flag]
    p = sub.add_parser("register", parents=common, help="register USER@DOMAIN (asks for a password)")
    p.add_argument("user", metavar="USER@DOMAIN")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("whoami", parents=common, help="this client's user, ids and fingerprints")
    p = sub.add_parser("connect", parents=common, help="send a connection request")
    p.add_argument("user", metavar="USER@DOMAIN")
    p.add_argument("--alias", action="store_true", help="the address is an alias (ALIAS@DOMAIN)")
    p = sub.add_parser("requests", parents=common, help="pending connection requests")
    p.add_argument("--outgoing", action="store_true", help="the requests this client sent")
    p.add_argument("--all", action="store_true", help="also answered requests")
    for name, text in (("accept", "accept a connection request"), ("reject", "decline a connection request")):
        p = sub.add_parser(name, parents=common, help=text)
        p.add_argument("id", type=int, metavar="ID")
    sub.add_parser("contacts", parents=common, help="connected users and their fingerprints")
    p = sub.add_parser("disconnect", parents=common, help="remove a contact (rotates the friendship token)")
    p.add_argument("user", metavar="USER@DOMAIN")
    al = sub.add_parser("alias", parents=common, help="register or delete an alias of yours")
    als = al.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    p = als.add_parser("add", parents=common, help="register ALIAS with your homeserver")
    p.add_argument("name", metavar="ALIAS")
    p = als.add_parser("remove", parents=common, help="delete one of your aliases")
    p.add_argument("name", metavar="ALIAS")
    sub.add_parser("aliases", parents=common, help="your aliases")
    g = sub.add_parser("group", parents=common, help="create, invite, remove, leave, delete")
    gs = g.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    p = gs.add_parser("create", parents=common, help="create a group")
    p.add_argument("name", metavar="NAME")
    for name, text in (("invite", "add a contact to a group"), ("remove", "remove a user from a group")):
        p = gs.add_parser(name, parents=common, help=text)
        p.add_argument("group", metavar="GROUP")
        p.add_argument("user", metavar="USER@DOMAIN")
    for name, text in (("leave", "leave a group"), ("delete", "delete a group (admins)")):
        p = gs.add_parser(name, parents=common, help=text)
        p.add_argument("group", metavar="GROUP")
    sub.add_parser("groups", parents=common, help="the groups this client is in")
    p = sub.add_parser("send", parents=common, help="send a message to a group")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("text", metavar="TEXT")
    p = sub.add_parser("messages", parents=common, help="messages received and sent so far")
    p.add_argument("group", nargs="?", metavar="GROUP")
    p = sub.add_parser("sync", parents=common, help="fetch and process everything that arrived")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if nothing arrived, keep looking this long",
    )
    p = sub.add_parser("delete-account", parents=common, help="delete the account (asks for the password)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    parser.set_defaults(func=run, password_stdin=False)
    return parser


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser("client", help="the command-line client"))


def _describe(e: BaseException) -> str:
    if isinstance(e, ServiceError):
        return f"{e.host} refused: {e.message} ({e.code})"
    if isinstance(e, Unavailable):
        return f"cannot reach the homeserver: {e}"
    return str(e) or type(e).__name__


async def _run(args: argparse.Namespace) -> int:
    hosts: dict[str, str] = {}
    if args.hosts is not None:
        hosts.update(read_hosts(args.hosts))
    for entry in args.resolve:
        host, sep, target = entry.partition("=")
        if not sep:
            raise ClientError(f"--resolve expects HOST=ADDR:PORT, got {entry!r}")
        hosts[host] = target
    client = PhxClient.open(args.home, ca_file=args.ca, hosts=hosts, plain_http=args.plain_http)
    try:
        await COMMANDS[args.command](client, args, Output(bool(args.json)))
    finally:
        await client.aclose()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (PhxError, OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"phx client: error: {_describe(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("phx client: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = _configure(
        argparse.ArgumentParser(prog="phx client", description="the Phoenix command-line client")
    )
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
