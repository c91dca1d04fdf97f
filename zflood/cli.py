"""The `zflood` command: init, join, run, publish, tail, status, members, name, invite,
export, import, demo.

Every failure the user can cause ends in one line on stderr and a non-zero exit: 2 for a bad
argument or join code, 78 (EX_CONFIG) for a setup only a person can fix (and, under systemd,
for a bad argument or join code too, so the unit does not restart it), 1 for anything else
(no daemon, a store in use, a full disk). With stderr into the journal the line is marked as
an error ("<3>").
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2

from . import __version__
from .errors import BadJoinCode, ConfigurationError, LocalError, NoGroup, ZfloodError

if TYPE_CHECKING:  # the commands import what they need when they run: a quick --help
    from . import wire
    from .identity import Group
    from .local import Client
    from .members import Members
    from .node import Node
    from .store import Note


class BadArgument(LocalError):
    """A command-line value that cannot work: exit 2, like argparse's own errors."""

EXPORT_MAGIC = "zflood-export"
EXPORT_END = "zflood-export-end"  # the last item, with the count: a cut-off copy shows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zflood",
        description="Keep a small group of machines holding the same, ever-growing set of notes.",
        epilog="The state directory is --state, else that of --instance, else $ZFLOOD_STATE, "
        "else $STATE_DIRECTORY (systemd), else ~/.local/share/zflood. --state and --instance "
        "may also follow the command.",
    )
    p.add_argument("--version", action="version", version=f"zflood {__version__}")
    _place_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("init", help="start a new group here; prints its join code last")
    j = sub.add_parser(
        "join", help="join the group of a join code (asked for; or - to read it from stdin)",
        description="Join the group of a join code. With no argument the code is asked for "
        "on the terminal, not echoed; with - it is read from stdin (the first line).",
    )
    j.add_argument("code", nargs="?", metavar="code",
                   help="- to read the code from stdin. The code itself is still accepted "
                   "here but discouraged: it stays in shell history and in the process list, "
                   "where every user of this machine can read it")

    r = sub.add_parser("run", help="serve in the foreground (Ctrl-C or SIGTERM stops)")
    r.add_argument("--listen", metavar="ENDPOINT",
                   help="ROUTER endpoint for peers (default tcp://0.0.0.0 on this member's own "
                   "port, chosen at the first run and kept in the state directory; port 0 "
                   "picks any)")
    r.add_argument("--peer", action="append", default=[], metavar="tcp://HOST:PORT",
                   help="a static peer, for networks without multicast (repeatable)")
    r.add_argument("--interface", action="append", metavar="NAME|IP",
                   help="announce and browse on this interface only (repeatable)")
    r.add_argument("--pub", action="append", default=[], metavar="tcp://127.0.0.1:PORT",
                   help="also publish delivered notes on this endpoint; a tcp port on "
                   "loopback lets every user of this machine read every note")
    r.add_argument("--no-discovery", action="store_true", help="no mDNS: static peers only")
    r.add_argument("--socket-group", metavar="GROUP",
                   help="let members of GROUP use the control and PUB sockets (systemd's unit: "
                   "zflood)")
    r.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    r.add_argument("--new-identity", action="store_true",
                   help="if node.db was lost (emptied or removed) while group.key is still "
                   "here, rejoin the group as a new member; without it, zflood refuses")

    pub = sub.add_parser("publish", help="publish a note (works offline: it waits in the store)")
    pub.add_argument("text", metavar="TEXT", help="the note, or - to read it from stdin")
    pub.add_argument("--binary", action="store_true",
                     help="publish as bytes, not text (TEXT, or stdin with -)")

    t = sub.add_parser(
        "tail", help="print notes as they arrive, one a line (with the daemon stopped: "
        "what the store holds, then exit)")
    start = t.add_mutually_exclusive_group()  # both given, one would be silently ignored
    start.add_argument("--all", action="store_true", help="start from the first note held")
    start.add_argument("-n", "--lines", type=_count, metavar="N",
                       help="start with the last N notes held")
    t.add_argument("--no-follow", action="store_true",
                   help="print the notes held and exit, without waiting for new ones")
    t.add_argument("--json", action="store_true", help="one JSON object a line")

    s = sub.add_parser(
        "status", help="this node and its name, the group, the daemon and its endpoints, "
        "notes and forks, sync progress, and each peer: name, state and since when, last "
        "heard, notes it lacks and we lack (--json adds heads and members; --code the join "
        "code)")
    s.add_argument("--json", action="store_true", help="as JSON")
    s.add_argument("--code", action="store_true",
                   help="also show the group's join code (a secret: see zflood invite)")

    sub.add_parser("invite", help="show the join code that adds a machine to this group")

    m = sub.add_parser("members", help="every member: name, id, notes, when its latest note "
                       "arrived here, whether it is linked now")
    m.add_argument("--json", action="store_true", help="as JSON")
    n = sub.add_parser("name", help="show this member's name, or give it a NEW one (every "
                       "member sees it)")
    n.add_argument("new", nargs="?", metavar="NEW", help="the new name")

    sub.add_parser("check", help="verify the whole store (SQLite, every hash link, the "
                   "signatures); a running daemon fetches what is damaged again from peers")

    e = sub.add_parser("export", help="write every note, signed, to FILE (daemon stopped)")
    e.add_argument("file", type=Path, metavar="FILE")
    i = sub.add_parser("import", help="take the notes of an export FILE (daemon stopped)")
    i.add_argument("file", type=Path, metavar="FILE")

    d = sub.add_parser("demo", help="three real daemons on this machine, told as it happens")
    d.add_argument("--seconds", type=float, default=60.0, help="give up after this long")

    from .apps.bookmarks.cli import add_parser as add_bookmarks
    from .apps.chat.cli import add_parser as add_chat
    from .apps.mail.cli import add_parser as add_mail

    add_chat(sub)
    add_mail(sub)
    add_bookmarks(sub)
    for name in ("tail", "status", "invite", "members", "name"):
        # what `zflood --help` says of each, also atop its own --help
        sub.choices[name].description = next(
            a.help for a in sub._choices_actions if a.dest == name)
    for command in (sub.choices["init"], sub.choices["join"]):
        command.add_argument("--name", metavar="NAME",
                             help="this member's name for the others (default: the host name)")
    for command in _commands(sub):
        _place_options(command, argparse.SUPPRESS)
    return p


def _commands(sub: Any) -> Iterator[argparse.ArgumentParser]:
    """Every parser under `sub`, the apps' own subcommands (chat send, mail queue) too."""
    for command in sub.choices.values():
        yield command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _commands(action)


def _place_options(p: argparse.ArgumentParser, default: object) -> None:
    """--state and --instance, before the command or after it: after it, SUPPRESS keeps the
    subcommand's parser from overwriting a value given before."""
    p.add_argument("--state", type=Path, metavar="DIR", default=default,
                   help="state directory")
    p.add_argument("--instance", metavar="NAME", default=default,
                   help="the systemd instance zflood@NAME: its state in /var/lib/zflood/NAME, "
                   "its sockets in /run/zflood/NAME")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a count of notes: {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    from .systemd import error_line, to_journal, under_systemd

    # The engine's warnings (a full disk, say) are for a daemon's log; a command already
    # says what went wrong in its one line (`run` logs to stderr as configured there).
    logging.getLogger("zflood").addHandler(logging.NullHandler())

    # Under systemd a bad argument or join code is a configuration error like any other: the
    # unit restarts on failure except on 78, and no restart fixes a typo.
    usage = ConfigurationError.exit_status if under_systemd() else 2
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said if to_journal() else sys.stderr):
            args = _parser().parse_args(argv)
    except SystemExit as e:
        for line in said.getvalue().splitlines():  # argparse's usage and error, marked
            print(f"<3>{line}", file=sys.stderr)
        return usage if e.code == 2 else int(e.code or 0)

    def fail(message: str, status: int) -> int:
        print(error_line(f"zflood: {message}"), file=sys.stderr)
        return status

    for value in (sys.argv[1:] if argv is None else argv):
        # bytes that are not UTF-8 reach Python as lone surrogates, which nothing can store
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            raw = value.encode("utf-8", "surrogateescape")
            return fail(f"an argument is not UTF-8 text: {raw!r}"
                        " (to publish bytes: zflood publish --binary - < FILE)", usage)
    try:
        state = _state_dir(args)
        return int(COMMANDS[args.command](state, args))
    except BadJoinCode as e:
        return fail(f"bad join code: {e}", usage)
    except BadArgument as e:
        return fail(str(e), usage)
    except ConfigurationError as e:
        return fail(str(e), e.exit_status)
    except BrokenPipeError:
        # `zflood tail | head`: the reader left, so stop quietly as other tools do (they die
        # of SIGPIPE); stdout onto /dev/null keeps the flush at exit from failing again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except OSError as e:
        # "FILE: No such file or directory", not Python's "[Errno 2] ...: 'FILE'"
        return fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e), 1)
    except ZfloodError as e:
        return fail(str(e), 1)
    except KeyboardInterrupt:
        return 130


def _state_dir(args: argparse.Namespace) -> Path:
    from .statedir import default_state_dir, instance_state_dir

    if args.state is not None and args.instance is not None:
        raise BadArgument("--state and --instance name two places: give one")
    if args.instance is not None:
        if args.command in ("init", "join"):
            raise BadArgument(f"an instance joins with its credential: put the join code in "
                              f"/etc/zflood/{args.instance}.join and start zflood@{args.instance}")
        return instance_state_dir(args.instance)
    state: Path = args.state or default_state_dir()
    return state


# -- commands --------------------------------------------------------------------------------


def cmd_init(state: Path, args: argparse.Namespace) -> int:
    from .identity import Group
    from .statedir import load_group

    if load_group(state) is not None:
        raise LocalError(f"{state} already belongs to a group (its join code: zflood invite)")
    group = Group.new()
    node = _enter(state, group, args.name)
    print(f"node {node.hex()} started group {group.id.hex()} in {state}")
    print("on each other machine run `zflood join` and paste this code (keep it secret):")
    print(group.join_code)
    return 0


def cmd_join(state: Path, args: argparse.Namespace) -> int:
    from .identity import Group
    from .statedir import check_group

    group = Group.from_join_code(_join_code(args.code))
    check_group(state, group)
    node = _enter(state, group, args.name)
    print(f"node {node.hex()} joined group {group.id.hex()}; now: zflood run")
    return 0


#: A join code is about 70 characters; reading stops here, whatever is piped in.
_CODE_READ_LIMIT = 4096


def _join_code(arg: str | None) -> str:
    """The join code: `arg` itself, the first line of stdin for "-", or asked for without
    echo on the terminal when there is no argument (never argv: other users can read it)."""
    if arg is not None and arg != "-":
        return arg
    if arg == "-":
        try:
            line = sys.stdin.readline(_CODE_READ_LIMIT)
        except (OSError, UnicodeDecodeError) as e:
            raise BadArgument(f"cannot read a join code from stdin: {e}") from None
        if not line.strip():
            raise BadJoinCode("stdin held no join code (zflood join - reads its first line)")
        return line
    import getpass

    try:  # getpass would fall back to reading stdin with echo on: refuse that instead
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise BadArgument("no terminal to ask for the join code on: pipe it to `zflood join -`"
                          ) from None
    try:
        code = getpass.getpass("join code (not shown): ")
    except EOFError:
        print(file=sys.stderr)  # end the prompt's line, so the error has a line of its own
        code = ""
    except KeyboardInterrupt:
        print(file=sys.stderr)  # and the shell's next prompt too
        raise
    if not code.strip():
        raise BadJoinCode("no join code was typed")
    return code


def _enter(state: Path, group: Group, name: str | None) -> bytes:
    """Make `state` a member of `group`, named `name` (default: the host name); returns its
    node id. The store is opened first: if it belongs to another group (its group.key lost),
    nothing is written."""
    from .statedir import default_name, save_group

    body = _name_note(name or default_name())
    node = _open(state, group, create=True)
    try:
        save_group(state, group)
        if _members(node).name(node.id) is None:  # joining again keeps the name it has
            _publish_offline(node, body)
    finally:
        node.close()
    return node.id


def _publish_offline(node: Node, body: str | bytes) -> Note:
    """Publish into a store the daemon is not running in, keeping its member table."""
    note = node.publish(body)
    _members(node)  # takes in the new note, with its time
    return note


def _name_note(name: str) -> bytes:
    from .members import name_note

    try:
        return name_note(name, time.time())
    except LocalError as e:
        raise BadArgument(str(e)) from None


def _members(node: Node) -> Members:
    """The member table of a store the daemon is not running in, brought up to date."""
    from .members import Members

    members = Members.load(node, time.time())
    members.save(node)
    return members


def cmd_run(state: Path, args: argparse.Namespace) -> int:
    from .daemon import Options, run
    from .endpoints import tcp_port
    from .systemd import JournalFormatter, to_journal

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if to_journal() else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        handlers=[handler])
    try:
        if args.listen:
            tcp_port(args.listen, any_port=True)
        for endpoint in [*args.peer, *args.pub]:
            tcp_port(endpoint)
    except LocalError as e:
        raise BadArgument(str(e)) from None
    options = Options(listen=args.listen, peers=args.peer, interfaces=args.interface,
                      pub=args.pub, discovery=not args.no_discovery,
                      socket_group=args.socket_group, new_identity=args.new_identity)
    return run(state, options)


def _client(state: Path, ends: dict[str, Any] | None = None) -> Client:
    """A client of the daemon running in `state` (whose endpoints `_running` returned)."""
    from .local import Client

    ends = ends or _running(state)
    if ends is None:
        raise LocalError(f"no zflood daemon is running in {state} (start one: zflood run)")
    return Client(ends["control"][0], ends["pub"][0])


def _running(state: Path) -> dict[str, Any] | None:
    """The endpoints of the daemon running in `state`, or None if none runs."""
    from .statedir import running

    return running(state)


def cmd_publish(state: Path, args: argparse.Namespace) -> int:
    body: str | bytes
    if args.text == "-":
        from .config import DEFAULT

        # read no more than a note can hold: a larger stdin is refused, not held in memory
        raw = sys.stdin.buffer.read(DEFAULT.max_body + 1)
        if len(raw) > DEFAULT.max_body:
            raise LocalError(f"a note body is at most {DEFAULT.max_body} bytes")
        try:
            body = raw if args.binary else raw.decode()
        except UnicodeDecodeError:
            raise LocalError("stdin is not UTF-8 text; pass --binary to publish bytes") from None
    else:
        body = args.text.encode() if args.binary else args.text
    ends = _running(state)
    if ends:
        with _client(state, ends) as client:
            sent = client.publish(body)
        print(f"published #{sent['seqno']} (index {sent['index']})")
        return 0
    # No daemon: publish straight into the store; it leaves with the next `zflood run`.
    node, _ = _offline_node(state)
    try:
        note = _publish_offline(node, body)
    finally:
        node.close()
    print(f"published #{note.seqno} offline (index {note.index}); it goes out with zflood run")
    return 0


def _offline_node(state: Path) -> tuple[Node, Group]:
    from .statedir import load_group

    group = load_group(state)
    if group is None:
        raise NoGroup(state)
    return _open(state, group), group


def _open(state: Path, group: Group, create: bool = False) -> Node:
    from .errors import StoreInUse
    from .statedir import open_node

    try:
        return open_node(state, group, create=create)
    except StoreInUse:
        raise LocalError(f"{state} is in use by a running zflood daemon: stop it first, "
                         "or talk to it (zflood publish, tail, status)") from None


def cmd_tail(state: Path, args: argparse.Namespace) -> int:
    from .local import note_map
    from .members import parse_name

    follow = not args.no_follow
    ends = _running(state)
    notes: Iterable[dict[str, Any]]
    if ends is None:  # read the store itself; nothing arrives while the daemon is stopped
        node, _ = _offline_node(state)
        try:
            names = _members(node).names()
            start = _tail_start(args, node.count)
            for held in node.notes(start):
                print(_note_line(note_map(held), names, args.json), flush=True)
        finally:
            node.close()
        if follow:
            print(f"zflood: no daemon is running in {state}: printed what the store holds; "
                  "zflood run, then tail to follow", file=sys.stderr)
        return 0
    with _client(state, ends) as client:
        status = client.status()
        names = {m["origin"]: m["name"] for m in status.get("members", []) if m.get("name")}
        count = status["notes"]
        start = _tail_start(args, count)
        notes = client.follow(start) if follow else _read_until(client, start, count)
        for note in notes:
            if note["index"] >= count:  # new: it may rename its origin from here on
                name = parse_name(note["body"])
                if name is not None:
                    names[note["origin"].hex()] = name
            print(_note_line(note, names, args.json), flush=True)
    return 0


def _tail_start(args: argparse.Namespace, count: int) -> int:
    if args.all:
        return 0
    if args.lines is not None:
        return max(0, count - int(args.lines))
    return count


def _read_until(client: Client, start: int, end: int) -> Iterator[dict[str, Any]]:
    """The notes with index in [start, end) through the daemon."""
    while start < end:
        notes, start = client.read(start, min(end - start, 1000))
        if not notes:
            return
        yield from (n for n in notes if n["index"] < end)


def _note_line(note: dict[str, Any], names: dict[str, str], as_json: bool) -> str:
    from .members import parse_name, short

    body = note["body"]
    origin = note["origin"].hex()
    if as_json:
        out = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in note.items()}
        if isinstance(body, bytes):
            out["body"] = {"base64": base64.b64encode(body).decode()}
        out["name"] = names.get(origin)
        return json.dumps(out, ensure_ascii=False)
    if isinstance(body, str):
        text = escape(body)
    else:
        name = parse_name(body)
        text = f"<{len(body)} bytes>" if name is None else f"[names itself {name}]"
    who = f"{short(origin)}#{note['seqno']}"
    if origin in names:
        who = f"{escape(names[origin])} {who}"
    return f"{note['index']:>6} {who}: {text}"


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Marks that reorder text on a terminal (bidi overrides and isolates): shown escaped.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape(text: str) -> str:
    """`text` on one line: newlines, tabs, backslashes and other control characters as
    backslash escapes, so one note is one line and cannot move a terminal's cursor."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _status(state: Path) -> dict[str, Any]:
    """What `status` reports: from the daemon if one runs, else from the store."""
    ends = _running(state)
    if ends:
        with _client(state, ends) as client:
            return dict(client.status(), running=True)
    from .status import node_status  # the engine: only needed with the daemon stopped

    node, _ = _offline_node(state)
    try:
        return {**node_status(node, _members(node)), "running": False, "listen": None,
                "pub": [], "control": [], "peers": [], "sync": None}
    finally:
        node.close()


def cmd_status(state: Path, args: argparse.Namespace) -> int:
    from .members import short
    from .progress import Report, counted
    from .statedir import load_group

    status = _status(state)
    if args.code:  # a secret: shown only when asked
        group = load_group(state)
        status["code"] = group.join_code if group else None
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    now = time.time()
    name = status.get("name")
    print(f"node    {escape(name) + ' ' if name else ''}({short(status['node'])}) {status['node']}")
    print(f"group   {status['group']}")
    if status["running"]:
        print(f"daemon  running, listening on {status['listen']}")
        print(f"local   control {', '.join(status['control'])}; pub {', '.join(status['pub'])}")
    else:
        print("daemon  stopped")
    members = status.get("members", [])
    origins = status.get("origins", len(status["heads"]))
    print(f"notes   {counted(status['notes'], 'note')} from {counted(origins, 'origin')} "
          f"({counted(len(members), 'member')}: zflood members); "
          f"{counted(len(status['forks']), 'fork')}")
    names = {m["origin"]: m["name"] for m in members if m.get("name")}
    for fork in status["forks"]:
        print(f"fork    {_fork_line(fork, names)}")
    sync = status.get("sync")
    if sync is not None:
        print(f"sync    {Report(**sync).line()}")
    print(f"ed25519 by {status['ed25519']}")
    print(f"store   {_store_line(status.get('store') or {})}")
    for peer in status["peers"]:
        print(f"peer    {_peer_line(peer, now)}")
    if args.code:
        print(f"code    {status['code']}  (zflood join adds a machine; keep it secret)")
    return 0


def _peer_line(peer: dict[str, Any], now: float) -> str:
    from .members import short
    from .progress import duration

    if peer["node"]:
        who = f"{escape(peer['name'])} ({short(peer['node'])})" if peer.get("name") \
            else short(peer["node"])
    else:
        who = "? (no answer yet)"
    text = f"{who} {peer['state']}"
    if peer.get("since") is not None:
        text += f" for {duration(max(0.0, now - peer['since']))}"
    heard = peer.get("heard")
    text += f", heard {duration(max(0.0, now - heard))} ago" if heard is not None \
        else ", not heard"
    if peer.get("they_lack") is not None:
        text += f"; it lacks {peer['they_lack']}, we lack {peer['we_lack']}"
    return f"{text}; {peer['address']}"


def cmd_members(state: Path, args: argparse.Namespace) -> int:
    from .members import short
    from .progress import duration

    status = _status(state)
    members = status["members"]
    if args.json:
        print(json.dumps(members, indent=2))
        return 0
    now = time.time()
    rows = [("NAME", "ID", "NOTES", "LATEST NOTE ARRIVED", "LINKED")]
    for m in members:
        last = m["last"]
        arrived = "-" if last is None else (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))
            + f" ({duration(max(0.0, now - last))} ago)")
        linked = "this node" if m["self"] else "yes" if m["linked"] else "no"
        rows.append((escape(m["name"]) if m["name"] else "-", short(m["origin"]),
                     str(m["notes"]), arrived, linked))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    if status.get("members_left_out"):
        print(f"(and {status['members_left_out']} more origins the running daemon does not "
              "list; with it stopped, zflood members lists every one)")
    if not status["running"]:
        print("(the daemon is stopped: nobody is linked)")
    return 0


def cmd_name(state: Path, args: argparse.Namespace) -> int:
    from .members import parse_name, short

    if args.new is None:
        status = _status(state)
        name = status.get("name")
        print(escape(name) if name else f"(no name yet: {short(status['node'])}; "
              "zflood name NEW gives it one)")
        return 0
    body = _name_note(args.new)
    new = parse_name(body)
    ends = _running(state)
    if ends:
        with _client(state, ends) as client:
            client.publish(body)
            node = client.status()["node"]
    else:
        offline, _ = _offline_node(state)
        try:
            _publish_offline(offline, body)
            node = offline.id.hex()
        finally:
            offline.close()
    later = "the others" if ends else "once the daemon runs, the others"
    print(f"this member ({short(node)}) is now called {new}; {later} see it as it reaches them")
    return 0


def cmd_invite(state: Path, args: argparse.Namespace) -> int:
    from .statedir import load_group

    group = load_group(state)
    if group is None:
        raise NoGroup(state)
    print("on the machine to add, run `zflood join` and paste this code (keep it secret):",
          file=sys.stderr)
    print(group.join_code)
    return 0


def _fork_line(fork: dict[str, Any], names: dict[str, str]) -> str:
    """One fork for `status`: the origin, where its branches split, which was kept, and
    what was published again."""
    from .members import short

    origin = fork["origin"]
    who = "this node" if fork["ours"] else (
        f"{escape(names[origin])} ({short(origin)})" if origin in names else short(origin))
    line = (f"{who} split at #{fork['seqno']}: kept {fork['kept'][:8]}, "
            f"dropped {fork['lost'][:8]} ({fork['dropped']} held off the log)")
    if fork["published_again"]:
        first, last = fork["again_seqnos"]
        line += f"; {fork['published_again']} published again as #{first}..#{last}"
    elif fork["healing"]:
        line += "; publishing again once caught up"
    return line


def _store_line(store: dict[str, Any]) -> str:
    from .progress import counted

    parts = ["storing" if store.get("storing", True) else "NOT STORING (asking peers for "
             "nothing until it can)"]
    if store.get("error"):
        parts.append(f"last error: {store['error']}")
    damaged = store.get("damaged") or {}
    if damaged:
        parts.append(f"{counted(sum(damaged.values()), 'damaged note')} of "
                     f"{counted(len(damaged), 'origin')}, being "
                     "fetched again from peers")
    if store.get("damaged_off_chain"):
        parts.append(f"{counted(store['damaged_off_chain'], 'note')} kept off a chain (forks)"
                     " damaged: not shown")
    return "; ".join(parts)


def cmd_check(state: Path, args: argparse.Namespace) -> int:
    """Verify the whole store, offline or through the running daemon (which then fetches
    what is damaged again from its peers)."""
    from .progress import counted

    tty = sys.stderr.isatty()

    def progress(step: dict[str, Any]) -> None:
        line = f"checking {step['checked']:,} of {step['total']:,} notes"
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    ends = _running(state)
    if ends:
        with _client(state, ends) as client:
            step = client.check(restart=True)
            while not step["done"]:
                progress(step)
                step = client.check()
    else:
        node, _ = _offline_node(state)
        try:
            for p in node.check_store():
                step = {"checked": p.checked, "total": p.total, "damaged":
                        {o.hex(): s for o, s in p.damaged.items()}, "integrity": p.integrity}
                progress(step)
        finally:
            node.close()
    if tty:
        print(file=sys.stderr)
    damaged: dict[str, list[int]] = step["damaged"]
    integrity: list[str] = step["integrity"]
    if not damaged and not integrity:
        print(f"store OK: {step['total']:,} notes, every hash link and signature checks, "
              "SQLite finds no fault")
        return 0
    for line in integrity:
        print(f"damaged: SQLite: {line}")
    for origin, seqnos in damaged.items():
        fail = "fails its" if len(seqnos) == 1 else "fail their"
        print(f"damaged: {counted(len(seqnos), 'note')} of origin {origin[:16]} {fail} hash "
              f"link or signature: {_ranges(seqnos)}")
    if ends:
        print("they are neither delivered nor served; the daemon is fetching them again from "
              "peers (zflood status shows what is left)")
    else:
        print("they are neither delivered nor served; start the daemon (zflood run) to fetch "
              "them again from peers")
    return 1


def _ranges(seqnos: list[int], most: int = 10) -> str:
    """5, 7-9, 12 ... (at most `most` ranges shown)."""
    runs: list[list[int]] = []
    for s in seqnos:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (f" and {len(runs) - most} more ranges" if len(runs) > most else "")


def cmd_export(state: Path, args: argparse.Namespace) -> int:
    import stat

    from . import wire
    from .progress import counted

    node, _ = _offline_node(state)
    count = 0
    target: Path = args.file
    # A file is written beside itself and renamed at the end, so an export that fails (a full
    # disk) leaves an older backup of that name whole; a pipe or device is written directly.
    special = target.exists() and not stat.S_ISREG(target.stat().st_mode)
    path = target if special else target.with_name(f".{target.name}.zflood-tmp")
    try:
        # every note of the group is in it: owner-only, as node.db is
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if not special:
            os.fchmod(fd, 0o600)  # the mode given to open applies only to a file it creates
        try:
            with os.fdopen(fd, "wb") as f:
                cbor2.dump({EXPORT_MAGIC: 1, "group": node.group}, f)
                for batch in node.export():
                    f.write(wire.encode(batch))
                    count += len(batch.bodies)
                cbor2.dump({EXPORT_END: count}, f)
                if not special:
                    f.flush()
                    os.fsync(f.fileno())
            if not special:
                os.replace(path, target)
        except BaseException:
            if not special:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
    finally:
        node.close()
    print(f"exported {counted(count, 'note')} to {args.file}")
    return 0


def _read_export(path: Path, group: bytes) -> Iterator[wire.Notes]:
    """The batches of an export, checked as far as the file can be: damage shows as a
    LocalError, at the latest when the end mark is missing or its count is wrong."""
    from . import wire

    count = 0
    follows: dict[bytes, int] = {}  # origin -> where its next batch must start
    with open(path, "rb") as f:
        try:
            header = cbor2.load(f)
        except Exception:
            raise LocalError(f"{path} is not a zflood export") from None
        if not isinstance(header, dict) or header.get(EXPORT_MAGIC) != 1:
            raise LocalError(f"{path} is not a zflood export")
        if header.get("group") != group:
            raise LocalError(f"{path} comes from another group")
        while True:
            try:
                item = cbor2.load(f)
                if isinstance(item, dict) and EXPORT_END in item:
                    break
                msg = wire.decode(cbor2.dumps(item))
            except (EOFError, cbor2.CBORDecodeEOF):
                raise LocalError(f"{path} is damaged: it ends early, after {count} notes "
                                 "(a copy cut short?)") from None
            except Exception as e:
                raise LocalError(f"{path} is damaged: {e}") from None
            if not isinstance(msg, wire.Notes):
                raise LocalError(f"{path} is damaged: a {type(msg).__name__} among the notes")
            # An export writes each origin's log whole, in order, from its first note.
            if msg.start != follows.get(msg.origin, 0):
                raise LocalError(f"{path} is damaged: a batch of {msg.origin.hex()[:8]} starts "
                                 f"at {msg.start}, not {follows.get(msg.origin, 0)}")
            follows[msg.origin] = msg.start + len(msg.bodies)
            count += len(msg.bodies)
            yield msg
        if item[EXPORT_END] != count or f.read(1):
            raise LocalError(f"{path} is damaged: its end mark does not match its notes")


def cmd_import(state: Path, args: argparse.Namespace) -> int:
    node, _ = _offline_node(state)
    new = 0
    try:
        for batch in _read_export(args.file, node.group):
            new += node.import_notes(batch)
    except LocalError as e:
        # What was taken is signed and checked: keep it, and say so.
        raise LocalError(f"{e}; {new} new notes taken before that") from None
    finally:
        node.close()
    print(f"imported {new} new notes from {args.file}")
    return 0


def cmd_demo(state: Path, args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(args.seconds)


def cmd_chat(state: Path, args: argparse.Namespace) -> int:
    from .apps.chat.cli import main as chat

    return chat(state, args)


def cmd_mail(state: Path, args: argparse.Namespace) -> int:
    from .apps.mail.cli import main as mail

    return mail(state, args)


def cmd_bookmarks(state: Path, args: argparse.Namespace) -> int:
    from .apps.bookmarks.cli import main as bookmarks

    return bookmarks(state, args)


COMMANDS = {
    "init": cmd_init,
    "join": cmd_join,
    "run": cmd_run,
    "publish": cmd_publish,
    "tail": cmd_tail,
    "status": cmd_status,
    "check": cmd_check,
    "export": cmd_export,
    "import": cmd_import,
    "demo": cmd_demo,
    "chat": cmd_chat,
    "mail": cmd_mail,
    "bookmarks": cmd_bookmarks,
    "invite": cmd_invite,
    "members": cmd_members,
    "name": cmd_name,
}


if __name__ == "__main__":
    sys.exit(main())
