"""The `zflood` command: init, join, run, publish, tail, status, export, import, demo.

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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2

from . import __version__, wire
from .errors import BadJoinCode, ConfigurationError, LocalError, ZfloodError

if TYPE_CHECKING:  # the commands import what they need when they run: a quick --help
    from .identity import Group
    from .local import Client
    from .node import Node


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
                   help="also publish delivered notes on this endpoint")
    r.add_argument("--no-discovery", action="store_true", help="no mDNS: static peers only")
    r.add_argument("--socket-group", metavar="GROUP",
                   help="let members of GROUP use the control and PUB sockets (systemd's unit: "
                   "zflood)")
    r.add_argument("-v", "--verbose", action="store_true", help="log debug detail")

    pub = sub.add_parser("publish", help="publish a note (works offline: it waits in the store)")
    pub.add_argument("text", metavar="TEXT", help="the note, or - to read it from stdin")
    pub.add_argument("--binary", action="store_true", help="publish stdin as bytes, not text")

    t = sub.add_parser("tail", help="print notes as they arrive")
    t.add_argument("--all", action="store_true", help="start from the first note held")
    t.add_argument("--json", action="store_true", help="one JSON object a line")

    s = sub.add_parser("status", help="node, group, peers, heads, counts, endpoints, join code")
    s.add_argument("--json", action="store_true", help="as JSON")

    e = sub.add_parser("export", help="write every note, signed, to FILE (daemon stopped)")
    e.add_argument("file", type=Path, metavar="FILE")
    i = sub.add_parser("import", help="take the notes of an export FILE (daemon stopped)")
    i.add_argument("file", type=Path, metavar="FILE")

    d = sub.add_parser("demo", help="three real daemons on this machine, told as it happens")
    d.add_argument("--seconds", type=float, default=60.0, help="give up after this long")

    from .apps.chat.cli import add_parser as add_chat
    from .apps.mail.cli import add_parser as add_mail

    add_chat(sub)
    add_mail(sub)
    for command in sub.choices.values():
        _place_options(command, argparse.SUPPRESS)
    return p


def _place_options(p: argparse.ArgumentParser, default: object) -> None:
    """--state and --instance, before the command or after it: after it, SUPPRESS keeps the
    subcommand's parser from overwriting a value given before."""
    p.add_argument("--state", type=Path, metavar="DIR", default=default,
                   help="state directory")
    p.add_argument("--instance", metavar="NAME", default=default,
                   help="the systemd instance zflood@NAME: its state in /var/lib/zflood/NAME, "
                   "its sockets in /run/zflood/NAME")


def main(argv: list[str] | None = None) -> int:
    from .systemd import error_line, to_journal, under_systemd

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

    try:
        state = _state_dir(args)
        return int(COMMANDS[args.command](state, args))
    except BadJoinCode as e:
        return fail(f"bad join code: {e}", usage)
    except BadArgument as e:
        return fail(str(e), usage)
    except ConfigurationError as e:
        return fail(str(e), e.exit_status)
    except (ZfloodError, OSError) as e:
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
        raise LocalError(f"{state} already belongs to a group (its join code: zflood status)")
    group = Group.new()
    node = _enter(state, group)
    print(f"node {node.hex()} started group {group.id.hex()} in {state}")
    print("join the other machines with: zflood join CODE, where CODE is:")
    print(group.join_code)
    return 0


def cmd_join(state: Path, args: argparse.Namespace) -> int:
    from .identity import Group
    from .statedir import check_group

    group = Group.from_join_code(_join_code(args.code))
    check_group(state, group)
    node = _enter(state, group)
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
        code = ""
    if not code.strip():
        raise BadJoinCode("no join code was typed")
    return code


def _enter(state: Path, group: Group) -> bytes:
    """Make `state` a member of `group`; returns its node id. The store is opened first: if
    it belongs to another group (its group.key lost), nothing is written."""
    from .statedir import save_group

    node = _open(state, group)
    try:
        save_group(state, group)
    finally:
        node.close()
    return node.id


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
                      socket_group=args.socket_group)
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
    from .statedir import STORE, read_endpoints, runtime_dir_of
    from .store import in_use

    runtime = runtime_dir_of(state)
    if runtime is not None:
        return _instance_running(runtime)
    try:
        ends = read_endpoints(state)
        os.kill(ends["pid"], 0)
    except (LocalError, OSError, KeyError, TypeError):
        return None  # a kill -9 leaves endpoints.json naming a dead pid
    # The pid is alive, but it may have been reused (a kill -9, then a reboot): the daemon
    # is the process holding the store's lock.
    return ends if in_use(state / STORE) else None


def _instance_running(runtime: Path) -> dict[str, Any] | None:
    """A systemd instance's sockets, found in its runtime directory (which exists while it
    runs) without reading its state (which only its own user and root may)."""
    from .local import ipc_endpoints
    from .statedir import SOCKET_GROUP

    pub, control = ipc_endpoints(runtime)
    try:
        os.stat(control.removeprefix("ipc://"))
    except FileNotFoundError:
        return None
    except PermissionError:
        pass
    else:
        if os.access(control.removeprefix("ipc://"), os.R_OK | os.W_OK):
            return {"control": [control], "pub": [pub]}
    name = runtime.name
    raise LocalError(f"zflood@{name} runs, but only root and members of the group "
                     f"{SOCKET_GROUP} may use it (sudo usermod -aG {SOCKET_GROUP} USER, then log "
                     "in again)")


def cmd_publish(state: Path, args: argparse.Namespace) -> int:
    body: str | bytes
    if args.text == "-":
        raw = sys.stdin.buffer.read()
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
    note = node.publish(body)
    node.close()
    print(f"published #{note.seqno} offline (index {note.index}); it goes out with zflood run")
    return 0


def _offline_node(state: Path) -> tuple[Node, Group]:
    from .statedir import STORE, load_group

    group = load_group(state)
    if group is None or not (state / STORE).exists():
        raise LocalError(f"{state} is in no group yet: run `zflood init` or `zflood join`")
    return _open(state, group), group


def _open(state: Path, group: Group) -> Node:
    from .errors import StoreInUse
    from .statedir import open_node

    try:
        return open_node(state, group)
    except StoreInUse:
        raise LocalError(f"{state} is in use by a running zflood daemon: stop it first, "
                         "or talk to it (zflood publish, tail, status)") from None


def cmd_tail(state: Path, args: argparse.Namespace) -> int:
    with _client(state) as client:
        start = 0 if args.all else client.status()["notes"]
        for note in client.follow(start):
            print(_note_line(note, args.json), flush=True)
    return 0


def _note_line(note: dict[str, Any], as_json: bool) -> str:
    body = note["body"]
    if as_json:
        out = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in note.items()}
        if isinstance(body, bytes):
            out["body"] = {"base64": base64.b64encode(body).decode()}
        return json.dumps(out, ensure_ascii=False)
    text = body if isinstance(body, str) else f"<{len(body)} bytes>"
    return f"{note['index']:>6} {note['origin'].hex()[:8]}#{note['seqno']} {text}"


def cmd_status(state: Path, args: argparse.Namespace) -> int:
    from .daemon import node_status
    from .statedir import load_group

    ends = _running(state)
    if ends:
        with _client(state, ends) as client:
            status = dict(client.status(), running=True)
        # a member of an instance's socket group may talk to it but not read its state
        group = load_group(state) if os.access(state, os.R_OK | os.X_OK) else None
    else:
        node, group = _offline_node(state)
        status = {**node_status(node), "running": False, "listen": None, "pub": [],
                  "control": [], "peers": []}
        node.close()
    status["code"] = group.join_code if group else None  # what `zflood join` on another needs
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"node    {status['node']}")
    print(f"group   {status['group']}")
    running = status["running"]
    print(f"daemon  {'running, listening on ' + status['listen'] if running else 'stopped'}")
    print(f"notes   {status['notes']} from {len(status['heads'])} origins; "
          f"{len(status['forks'])} forks")
    for fork in status["forks"]:
        print(f"fork    {_fork_line(fork)}")
    print(f"ed25519 by {status['ed25519']}")
    for peer in status["peers"]:
        print(f"peer    {peer['node'][:16] or '?':16} {peer['state']:10} {peer['address']}")
    print(f"code    {status['code']}  (zflood join CODE adds a machine; keep it secret)")
    return 0


def _fork_line(fork: dict[str, Any]) -> str:
    """One fork for `status`: the origin, where its branches split, which was kept, and
    what was published again."""
    who = "this node" if fork["ours"] else fork["origin"][:16]
    line = (f"{who} split at #{fork['seqno']}: kept {fork['kept'][:8]}, "
            f"dropped {fork['lost'][:8]} ({fork['dropped']} held off the log)")
    if fork["published_again"]:
        first, last = fork["again_seqnos"]
        line += f"; {fork['published_again']} published again as #{first}..#{last}"
    elif fork["healing"]:
        line += "; publishing again once caught up"
    return line


def cmd_export(state: Path, args: argparse.Namespace) -> int:
    node, _ = _offline_node(state)
    count = 0
    try:
        with open(args.file, "wb") as f:
            cbor2.dump({EXPORT_MAGIC: 1, "group": node.group}, f)
            for batch in node.export():
                f.write(wire.encode(batch))
                count += len(batch.bodies)
            cbor2.dump({EXPORT_END: count}, f)
    finally:
        node.close()
    print(f"exported {count} notes to {args.file}")
    return 0


def _read_export(path: Path, group: bytes) -> Iterator[wire.Notes]:
    """The batches of an export, checked as far as the file can be: damage shows as a
    LocalError, at the latest when the end mark is missing or its count is wrong."""
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


COMMANDS = {
    "init": cmd_init,
    "join": cmd_join,
    "run": cmd_run,
    "publish": cmd_publish,
    "tail": cmd_tail,
    "status": cmd_status,
    "export": cmd_export,
    "import": cmd_import,
    "demo": cmd_demo,
    "chat": cmd_chat,
    "mail": cmd_mail,
}


if __name__ == "__main__":
    sys.exit(main())
