"""``phx serve --config FILE``: run the homeserver."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from phx.config import Config, load_config
from phx.errors import ConfigError, Unavailable
from phx.server import Registry, Service, StartupFailed, run_event_loop, serve
from phx.storage import Database


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="run the homeserver (AS, DS, QS as configured)")
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    parser.set_defaults(func=run)
    return parser


async def build_services(config: Config, db: Database, registry: Registry) -> Sequence[Service]:
    """The services named in ``server.services`` (:mod:`phx.server.wiring`)."""
    from phx.server.wiring import build_services as wire

    return await wire(config, db, registry)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        config.check_files()
    except ConfigError as e:
        print(f"phx serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_event_loop(serve(config, build_services))
    except (ConfigError, Unavailable, StartupFailed) as e:
        print(f"phx serve: {e}", file=sys.stderr)
        return 1
    return 0
