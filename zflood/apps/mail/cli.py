"""`zflood-sendmail`, `zflood mail queue` and `zflood mail deliver`.

`zflood-sendmail` is what mail clients call in place of /usr/sbin/sendmail (mutt's
`set sendmail`, `git send-email --sendmail-cmd`): the message on stdin, recipients as
arguments or `-t`. It exits 0 once the message is durable in this member's store, daemon
running or not; errors are one line on stderr and a sysexits status.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ...errors import NoGroup, ZfloodError

if TYPE_CHECKING:  # the zflood command builds its parser from here: load the rest on use
    from .queue import Message

EX_TEMPFAIL, EX_CONFIG = 75, 78  # sysexits.h (message.py has them all)
LOCK = "mail-deliver.lock"  # held by the one deliverer of this member


def _state(state: str | None, instance: str | None) -> Path:
    from ...statedir import default_state_dir, instance_state_dir

    if state:
        return Path(state)
    if instance:
        return instance_state_dir(instance)
    return default_state_dir()


def sendmail_main(argv: list[str] | None = None) -> int:
    """The `zflood-sendmail` command."""
    from ..group import opened
    from .message import EX_SOFTWARE, MailError, parse_args, submit

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1].strip().replace("\n", " "))
        print("usage: zflood-sendmail [--state DIR | --instance NAME] [-t] [-i] [-f FROM] "
              "[-F NAME] [--] [RECIPIENT ...] < message")
        return 0
    try:
        sub = parse_args(args)
        state = _state(sub.state, sub.instance)
        if sub.list_queue:
            return _print_queue(state, as_json=False)
        default = f"{getpass.getuser()}@{socket.getfqdn()}"
        with opened(state) as group:
            env = submit(group.publish, sys.stdin.buffer, sub, default)
        return 0 if env else EX_SOFTWARE
    except MailError as e:
        print(f"zflood-sendmail: {e}", file=sys.stderr)
        return e.status
    except NoGroup as e:  # a setup to make, not a moment to wait out: the client keeps it
        print(f"zflood-sendmail: {e}", file=sys.stderr)
        return EX_CONFIG
    except ZfloodError as e:
        print(f"zflood-sendmail: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    except OSError as e:
        print(f"zflood-sendmail: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return EX_TEMPFAIL


# -- zflood mail ... -------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    """`zflood mail` and its subcommands, on the zflood command's subparsers."""
    m = sub.add_parser("mail", help="the group's mail outbox (zflood-sendmail queues into it)")
    msub = m.add_subparsers(dest="mail_command", required=True, metavar="SUBCOMMAND")
    q = msub.add_parser("queue", help="every message with its state, like mailq")
    q.add_argument("--json", action="store_true", help="one JSON object a line")
    d = msub.add_parser("deliver", help="send the group's queued mail by SMTP (the always-on "
                        "member; one per group)")
    d.add_argument("--smtp", required=True, metavar="HOST:PORT", help="the SMTP server")
    sec = d.add_mutually_exclusive_group()
    sec.add_argument("--starttls", action="store_true", help="STARTTLS after connecting")
    sec.add_argument("--tls", action="store_true", help="TLS from the start (port 465)")
    d.add_argument("--login", metavar="USER", help="authenticate as USER")
    d.add_argument("--password-file", type=Path, metavar="FILE",
                   help="the password for --login (under systemd: a credential)")
    d.add_argument("--cafile", metavar="FILE", help="trust this CA for the server's certificate")
    d.add_argument("--take-over", action="store_true",
                   help="start even though another member's deliverer is active (it is gone)")
    d.add_argument("-v", "--verbose", action="store_true", help="log debug detail")


def main(state: Path, args: argparse.Namespace) -> int:
    if args.mail_command == "queue":
        return _print_queue(state, args.json)
    return _deliver(state, args)


def _print_queue(state: Path, as_json: bool) -> int:
    from ..group import notes as held_notes
    from ..group import opened
    from .message import APP
    from .queue import MailState

    mail = MailState()
    with opened(state) as group:
        for note in held_notes(group, app=APP):
            mail.add(note)
        names = group.names()
    rows = [_row(m) for m in mail.queue()]
    for row in rows:  # who delivered it, by the name its member gave itself
        if row.get("by"):
            row["by_name"] = names.get(row["by"])
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print("mail queue is empty")
        return 0
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["time"]))
        print(f"{row['id'][:12]}  {when}  {row['size']:>9}  {row['from']} -> "
              f"{', '.join(row['to'])}")
        detail = row.get("reply", "")
        who = row.get("by_name") or (row["by"][:8] if row.get("by") else "")
        by = f" by {who}" if who else ""
        print(f"    {row['state']}{by}{': ' + detail if detail else ''}")
    return 0


def _row(m: Message) -> dict[str, Any]:
    env = m.envelope
    assert env is not None
    row: dict[str, Any] = {
        "id": m.mid.hex(), "state": m.state, "from": env["from"], "to": env["rcpt"],
        "subject": env.get("subject", ""), "size": env["size"],
        "time": float(env.get("time", 0)),
        "submitted_by": m.origin.hex() if m.origin else None,
    }
    r = m.receipt
    if r is not None:
        row.update(by=r[0].hex(), reply=r[1].get("reply", ""), at=r[1].get("time"),
                   refused=r[1].get("rcpt") or {})
    elif m.deferred is not None:
        row.update(by=m.deferred[0].hex(), reply=m.deferred[1].get("reply", ""),
                   attempts=m.deferred[1]["attempts"], at=m.deferred[1].get("time"))
    elif not m.complete:
        row["state"] = "incomplete"  # parts still on their way here
    return row


def _deliver(state: Path, args: argparse.Namespace) -> int:
    from ...endpoints import tcp_parts
    from ..group import Online, open_group
    from .deliver import Deliverer, DelivererActive, Smtp

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parts = tcp_parts(f"tcp://{args.smtp}")
    if parts is None or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
        print(f"zflood: --smtp takes HOST:PORT, not {args.smtp!r}", file=sys.stderr)
        return 2
    password = None
    if args.password_file is not None and not args.login:
        print("zflood: --password-file needs --login", file=sys.stderr)
        return 2
    if args.login:
        if args.password_file is None:
            print("zflood: --login needs --password-file", file=sys.stderr)
            return 2
        try:
            password = args.password_file.read_text().rstrip("\n")
        except OSError as e:
            print(f"zflood: cannot read the password: {e}", file=sys.stderr)
            return EX_CONFIG
    security: Literal["plain", "starttls", "tls"] = (
        "tls" if args.tls else "starttls" if args.starttls else "plain")
    smtp = Smtp(parts[0].strip("[]"), int(parts[1]), security, args.login, password,
                args.cafile)
    group = open_group(state)
    if not isinstance(group, Online):
        group.close()
        print(f"zflood: the deliverer needs the daemon running in {state} (zflood run)",
              file=sys.stderr)
        return 1
    from ..group import stop_on_signals

    stopping = stop_on_signals()
    with contextlib.ExitStack() as stack:
        stack.callback(group.close)
        # under systemd the deliverer has a state directory of its own (the daemon's is not
        # its to write); by hand it keeps its one file beside the group's store
        own = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        files = Path(own) if own else state
        # One deliverer per member as well: two would each send every pending message (the
        # lease below only tells members apart) and share one mail-inflight file.
        lock = open(files / LOCK, "a+b")  # noqa: SIM115 (held until the deliverer ends)
        stack.callback(lock.close)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"zflood: a deliverer already runs for this member ({files / LOCK} is "
                  "held): stop it first", file=sys.stderr)
            return EX_CONFIG if os.environ.get("INVOCATION_ID") else 1
        deliverer = Deliverer(group.client, smtp, files)
        try:
            deliverer.start(take_over=args.take_over)
        except DelivererActive as e:
            print(f"zflood: {e}", file=sys.stderr)
            return EX_CONFIG if os.environ.get("INVOCATION_ID") else 1
        logging.getLogger("zflood.mail").info("delivering the group's mail to %s", args.smtp)
        deliverer.run(stopping.is_set)
    return 0


__all__ = ["add_parser", "main", "sendmail_main"]
