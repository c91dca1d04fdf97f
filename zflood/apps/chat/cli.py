"""`zflood chat`, `zflood chat send` and `zflood chat log`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ...errors import NoGroup
from ..group import opened
from . import history
from .lines import DEFAULT_ROOM, MAX_TEXT, format_line, note

HISTORY = 200  # lines an interactive chat opens with
MAX_READ = 4 * MAX_TEXT  # read of stdin: past a line's limit, so `note` refuses what is longer


def add_parser(sub: Any) -> None:
    c = sub.add_parser("chat", help="the group's chat: interactive, or send / log")
    c.add_argument("--room", default=DEFAULT_ROOM, help=f"the room (default {DEFAULT_ROOM})")
    csub = c.add_subparsers(dest="chat_command", metavar="SUBCOMMAND")
    s = csub.add_parser("send", help="send one line (works with the daemon stopped)")
    s.add_argument("text", metavar="TEXT", help="the line, or - to read it from stdin")
    s.add_argument("--room", default=argparse.SUPPRESS, help="the room")
    lg = csub.add_parser("log", help="print the room's last lines and exit")
    lg.add_argument("-n", type=int, default=50, metavar="N", help="how many (default 50)")
    lg.add_argument("--all-rooms", action="store_true", help="every room, not one")
    lg.add_argument("--json", action="store_true", help="one JSON object a line")
    lg.add_argument("--room", default=argparse.SUPPRESS, help="the room")


def main(state: Path, args: argparse.Namespace) -> int:
    from ...cli import BadArgument

    room = args.room
    if not room or len(room) > 64 or not room.isprintable():
        raise BadArgument(f"not a room name: {room!r}")
    if args.chat_command == "send":
        text = _stdin_line() if args.text == "-" else args.text
        try:
            body = note(room, text)
        except ValueError as e:
            raise BadArgument(str(e)) from None
        with opened(state) as group:
            sent = group.publish(body)
            where = "" if group.running else " offline; it goes out with zflood run"
        print(f"sent to {room} (index {sent['index']}){where}")
        return 0
    if args.chat_command == "log":
        if args.n < 0:
            raise BadArgument("-n takes a count >= 0")
        with opened(state) as group:
            lines = history.last(group, None if args.all_rooms else room, args.n)
            names = group.names()
        for ln in lines:
            if args.json:
                print(json.dumps({"index": ln.index, "origin": ln.origin.hex(),
                                  "name": names.get(ln.origin.hex()), "room": ln.room,
                                  "text": ln.text, "time": ln.time}, ensure_ascii=False))
            else:
                print(format_line(ln, names))
        return 0
    from ...statedir import load_group

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadArgument("the interactive chat needs a terminal: zflood chat send TEXT, "
                          "or zflood chat log")
    if load_group(state) is None:
        raise NoGroup(state)
    from .ui import run

    return run(state, room)


def _stdin_line() -> str:
    from ...cli import BadArgument

    raw = sys.stdin.buffer.read(MAX_READ)
    try:
        return raw.decode().rstrip("\n")
    except UnicodeDecodeError:
        raise BadArgument("stdin is not UTF-8 text") from None
