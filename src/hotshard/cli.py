"""The ``hotshard`` command: one entry point, a subcommand per service or job.

Subcommands are imported lazily so that ``hotshard bidder`` does not pay for matplotlib and
statsmodels, and ``hotshard --help`` answers at once. Each subcommand module offers
``configure(parser)`` to declare its flags and ``main(args) -> int`` to run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hotshard import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bidder": ("hotshard_bidder.bidder", "run one bidder shard (OpenRTB in, bid or no-bid out)"),
    "router": ("hotshard_bidder.router", "run the router, the fleet's front door"),
    "loadgen": ("hotshard_bidder.loadgen", "send open-loop OpenRTB load and report latency"),
    "demo": ("hotshard.local.demo", "run the whole loop on this machine (local mode)"),
    "operator": ("hotshard_operator.cli", "run the PartitionMap operator on Kubernetes (kopf)"),
    "simulate": ("hotshard.sim.cli", "model a 10M-rps fleet: hotshard against other strategies"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotshard",
        description="Keep a real-time bidding fleet inside its latency budget when traffic "
        "turns hot.",
    )
    parser.add_argument("--version", action="version", version=f"hotshard {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Import only the module of the subcommand being run; list the others by name.
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
