"""The ``phx`` command: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from phx import __version__
from phx.cli import admin, client, dev_setup, serve


def _demo(args: argparse.Namespace) -> int:
    from phx.client.demo import run

    return run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phx", description="Phoenix homeserver (AS, DS, QS) and client")
    parser.add_argument("--version", action="version", version=f"phx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="two homeservers on loopback, one conversation across them, checked")
    demo.set_defaults(func=_demo)
    serve.add_parser(sub)
    client.add_parser(sub)
    dev_setup.add_parser(sub)
    admin.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
