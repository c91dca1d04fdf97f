"""The `zflood` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zflood", description="Keep a small group of machines holding the same notes."
    )
    parser.add_argument("--version", action="version", version=f"zflood {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="simulate three nodes exchanging notes, told as it happens")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import simulated

        return simulated()
    return 2


if __name__ == "__main__":
    sys.exit(main())
