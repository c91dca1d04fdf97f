"""Mail as notes: what `zflood-sendmail` writes and what the deliverer and `mail queue` read.

A message is split into `part` notes of at most PART_SIZE bytes, then one `msg` note, the
envelope, which names the parts by count and hash. The envelope goes last: a message exists only
once it is durable, so a submission cut short (a killed sendmail, a full disk) leaves parts that
nothing refers to, and nothing is ever sent half. A note body is at most 256 KiB; a message is at
most MAX_MESSAGE (25 MiB, what common providers accept), about 130 parts. A submission is
spooled (to a temporary file past one part) and checked whole before anything is published, so
memory stays at about one part whatever the size.

    part     {app: "mail", k: "part", mid, n, data}
    msg      {app: "mail", k: "msg", mid, from, rcpt: [..], parts, size, sha256, subject, time}
    receipt  {app: "mail", k: "receipt", mid, status: "sent" | "failed", reply, rcpt, time}
    deferred {app: "mail", k: "deferred", mid, reply, attempts, time}
    deliverer{app: "mail", k: "deliverer", state: "active" | "stopped", smtp, time}

`time` is the author's clock, for display only. `mid` is 16 random bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses, make_msgid
from typing import BinaryIO

from .. import notes

APP = "mail"
PART_SIZE = 192 * 1024  # leaves room in a 256 KiB note for the CBOR around it
MAX_MESSAGE = 25 * 1024 * 1024
MAX_HEADER = 1024 * 1024  # a header block larger than this is not mail

# sysexits.h: what mail clients expect from a sendmail
EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER = 0, 64, 65, 67
EX_SOFTWARE, EX_OSERR, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 70, 71, 74, 75, 78


class MailError(Exception):
    """A submission that cannot be taken; `status` is its sysexits code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Submission:
    """What a sendmail command line asks for (see `parse_args`)."""

    recipients: list[str] = field(default_factory=list)
    sender: str | None = None  # -f
    full_name: str | None = None  # -F
    from_headers: bool = False  # -t
    dot_ends: bool = True  # without -i / -oi a line of a single "." ends the message
    list_queue: bool = False  # -bp: mailq
    state: str | None = None
    instance: str | None = None
    subject: str = ""  # read from the message, for `mail queue`


_REFUSED = {"-bs", "-bd", "-bi"}  # SMTP on stdin, daemon mode, aliases: not a queue's work
_IGNORED_VALUE = {"-B", "-N", "-R", "-V", "-X", "-L", "-O", "-p", "-h", "-q", "-r"}
_IGNORED_FLAGS = {"-v", "-m", "-bm", "-odb", "-odi", "-odq", "-oem", "-oee", "-oep", "-oeq",
                  "-oew", "-om", "-U", "-G", "-n", "-Am", "-Ac"}


def parse_args(argv: list[str]) -> Submission:
    """sendmail's command line, as mutt, git send-email and cron call it. Options sendmail
    takes that change nothing here (delivery mode, error mode, DSN) are accepted and ignored."""
    sub = Submission()
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            sub.recipients += args[i:]
            break
        if not a.startswith("-") or a == "-":
            sub.recipients.append(a)
            continue

        def value(opt: str, arg: str = a) -> str:
            nonlocal i
            if len(arg) > len(opt):
                return arg[len(opt):]
            if i >= len(args):
                raise MailError(f"option {opt} needs a value", EX_USAGE)
            i += 1
            return args[i - 1]

        if a in ("-i", "-oi"):
            sub.dot_ends = False
        elif a == "-t":
            sub.from_headers = True
        elif a == "-bp":
            sub.list_queue = True
        elif a.startswith("-f"):
            sub.sender = value("-f")
        elif a.startswith("-F"):
            sub.full_name = value("-F")
        elif a in ("--state", "--instance"):
            setattr(sub, a[2:], value(a))
        elif a.startswith(("--state=", "--instance=")):
            key, _, v = a[2:].partition("=")
            setattr(sub, key, v)
        elif a in _IGNORED_FLAGS or (a.startswith(("-o", "-b", "-d")) and a not in _REFUSED):
            continue
        elif a[:2] in _IGNORED_VALUE:
            if len(a) == 2:
                value(a)
        elif a in _REFUSED:
            raise MailError(f"{a} is not supported: zflood-sendmail only queues messages",
                            EX_USAGE)
        else:
            raise MailError(f"unknown option {a}", EX_USAGE)
    if sub.list_queue:
        return sub
    if not sub.recipients and not sub.from_headers:
        raise MailError("no recipients: name them, or pass -t to take them from the headers",
                        EX_USAGE)
    for r in sub.recipients:
        if not _ADDRESS.fullmatch(r):
            raise MailError(f"not an address: {r!r}", EX_NOUSER)
    return sub


_ADDRESS = re.compile(r"[^\s@<>,;]+@[^\s@<>,;]+|[^\s@<>,;]+")


@dataclass
class Envelope:
    mid: bytes
    sender: str
    recipients: list[str]
    parts: int
    size: int
    sha256: bytes
    subject: str
    time: float


def read_message(stream: BinaryIO, sub: Submission, default_sender: str) -> Iterator[bytes]:
    """The message on `stream` as PART_SIZE chunks, headers fixed up as sendmail does (-t takes
    recipients from To/Cc/Bcc and removes Bcc). Fills in `sub.recipients` and the sender before
    the first chunk is yielded; raises MailError for what cannot be mail."""
    head = _read_header(stream)
    given = len(head)  # the limit is on what the mail client handed over
    headers = BytesHeaderParser().parsebytes(head)
    if sub.from_headers:
        found = [a for _, a in getaddresses(
            [str(v) for k in ("To", "Cc", "Bcc") for v in headers.get_all(k, [])]) if a]
        sub.recipients = list(dict.fromkeys([*sub.recipients, *found]))
        head = _drop_header(head, b"bcc")
        if not sub.recipients:
            raise MailError("no recipients in the To, Cc or Bcc headers", EX_NOUSER)
    if sub.sender is None:
        addrs = getaddresses([str(v) for v in headers.get_all("From", [])])
        sub.sender = next((a for _, a in addrs if a), default_sender)
    if headers.get("From") is None:
        name = f'"{sub.full_name}" ' if sub.full_name else ""
        head = f"From: {name}<{sub.sender}>\n".encode() + head
    # As sendmail does: many servers refuse mail without them, and the time is the writer's
    # (the message may leave days later, from another machine).
    if headers.get("Message-ID") is None:
        domain = sub.sender.rpartition("@")[2] or "localhost"
        head = f"Message-ID: {make_msgid(domain=domain)}\n".encode() + head
    if headers.get("Date") is None:
        head = f"Date: {formatdate(localtime=True)}\n".encode() + head
    sub.subject = str(headers.get("Subject", ""))[:200]
    yield from _chunks(head, stream, sub.dot_ends, given)


def _read_header(stream: BinaryIO) -> bytes:
    lines: list[bytes] = []
    size = 0
    while True:
        line = stream.readline(MAX_HEADER)
        lines.append(line)
        size += len(line)
        if not line or line in (b"\n", b"\r\n"):
            return b"".join(lines)
        if size > MAX_HEADER:
            raise MailError("the header block exceeds 1 MiB: not a mail message", EX_DATAERR)


def _drop_header(head: bytes, name: bytes) -> bytes:
    out: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and dropping:
            continue  # a folded continuation of the dropped header
        dropping = line.split(b":", 1)[0].strip().lower() == name
        if not dropping:
            out.append(line)
    return b"".join(out)


def _chunks(head: bytes, stream: BinaryIO, dot_ends: bool, given: int) -> Iterator[bytes]:
    buf = bytearray(head)
    total = given
    while True:
        line = stream.readline(PART_SIZE)
        if not line:
            break
        if dot_ends and line in (b".\n", b".\r\n", b"."):
            break
        buf += line
        total += len(line)
        if total > MAX_MESSAGE:
            raise MailError(f"the message exceeds {MAX_MESSAGE // 2**20} MiB", EX_DATAERR)
        while len(buf) >= PART_SIZE:
            yield bytes(buf[:PART_SIZE])
            del buf[:PART_SIZE]
    if buf:
        yield bytes(buf)


def part_note(mid: bytes, n: int, data: bytes) -> bytes:
    return notes.encode(APP, k="part", mid=mid, n=n, data=data)


def envelope_note(env: Envelope) -> bytes:
    return notes.encode(APP, k="msg", mid=env.mid, **{"from": env.sender}, rcpt=env.recipients,
                        parts=env.parts, size=env.size, sha256=env.sha256,
                        subject=env.subject, time=env.time)


def submit(publish: object, stream: BinaryIO, sub: Submission, default_sender: str) -> Envelope:
    """Publish the message on `stream` as parts, then its envelope; returns the envelope once
    it is durable. `publish(body)` is the group's publish. The message is spooled (to disk past
    one part) and checked whole first, so a message that cannot be taken publishes nothing:
    parts that no envelope names would be copied to every member for nothing."""
    assert callable(publish)
    mid = os.urandom(16)
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=PART_SIZE) as spool:
        for chunk in read_message(stream, sub, default_sender):
            spool.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        spool.seek(0)
        n = 0
        while chunk := spool.read(PART_SIZE):
            publish(part_note(mid, n, chunk))
            n += 1
    assert sub.sender is not None
    env = Envelope(mid, sub.sender, sub.recipients, n, size, digest.digest(), sub.subject,
                   time.time())
    publish(envelope_note(env))
    return env
