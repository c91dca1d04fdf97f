"""The deliverer: on the always-on member, sends every queued message by SMTP, once.

Theory of operation. The deliverer follows the group's mail notes through the local API and
keeps `MailState` (see queue.py). A message that is complete and has no receipt is sent: the
parts are read one at a time from the store and streamed into DATA (dot-stuffed, CRLF line
ends), so memory stays at one part whatever the message's size. The server's answer becomes a
note: a `receipt` (sent with the server's reply; or failed for good with the reason), or a
`deferred` for a temporary failure, retried with exponential backoff until `give_up`.

Exactly once, and its one window. A receipt in the log means the message is never sent
again, by this deliverer or any other. The window where a crash can send a message twice is
from the moment the final "." of DATA leaves until the receipt is durable in the store: the
server may have taken the message while no receipt exists yet. Before the final "." the
deliverer writes the message's id to `mail-inflight` in the state directory, and removes it once
the receipt is published; a deliverer that starts and finds it logs that this one message may
go out twice, then sends it again (at least once beats at most once for mail). The window is
one SMTP reply plus one local publish (`tools/bench_mail.py` measures it); a crash before the
final "." leaves nothing at the server (SMTP drops an unfinished transaction).

One deliverer per group. A deliverer announces itself with a `deliverer` note (active, renewed
every `renew`, stopped on a clean exit). Another member's deliverer refuses to start while one
is active and younger than `lease`; `--take-over` overrides (after a crashed box died for good).
Two deliverers started at once on two sides of a partition can both run: each message is then
sent by both unless a receipt crosses first.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from .. import notes
from ..group import read_until
from .message import APP
from .queue import MailState, Message

log = logging.getLogger("zflood.mail")

Map = dict[str, Any]
INFLIGHT = "mail-inflight"


@dataclass(frozen=True)
class MailConfig:
    retry_base: float = 60.0  # first retry after a temporary failure
    retry_max: float = 3600.0  # retries at most this far apart
    give_up: float = 5 * 86400.0  # a message still failing after this long fails for good
    lease: float = 7200.0  # a deliverer note older than this no longer blocks another
    renew: float = 3600.0  # an active deliverer says so again this often
    idle: float = 1.0  # wake at least this often to retry what is due
    timeout: float = 60.0  # SMTP socket timeout


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    security: Literal["plain", "starttls", "tls"] = "plain"
    user: str | None = None
    password: str | None = None
    cafile: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Literal["sent", "temporary", "permanent"]
    reply: str
    rcpt: dict[str, str]  # recipient -> the server's answer to RCPT, when refused


class Client(Protocol):
    def publish(self, body: bytes | str) -> Map: ...
    def read(self, start: int = 0, limit: int = 1000, *,
             app: str | None = None) -> tuple[list[Map], int]: ...
    def follow(self, start: int = 0, *, app: str | None = None,
               timeout: float | None = None) -> Iterator[Map]: ...
    def status(self) -> Map: ...


class DotStuffer:
    """Message bytes to SMTP DATA bytes, a chunk at a time: CRLF line ends, a leading "." of
    a line doubled (RFC 5321 4.5.2), and the end that DATA's final "." needs."""

    def __init__(self) -> None:
        self._line_start = True
        self._cr = False  # the last chunk ended on a bare "\r"

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data, self._cr = data[:-1], True
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not data:
            return b""
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._line_start = data.endswith(b"\r\n")
        return data

    def end(self) -> bytes:
        tail = b"\r\n" if self._cr else b""
        self._cr = False
        if not tail and not self._line_start:
            tail = b"\r\n"
        return tail + b".\r\n"


def _text(reply: bytes | str) -> str:
    s = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    return " ".join(s.split())[:500]


def send(smtp: Smtp, envelope: Map, chunks: Iterable[bytes], before_end: Callable[[], None],
         timeout: float = 60.0) -> Outcome:
    """One SMTP transaction for one message. Network trouble and 4xx are temporary, 5xx from
    the server permanent; `before_end` runs just before the final "." (see the docstring)."""
    server: smtplib.SMTP
    try:
        if smtp.security == "tls":
            ctx = ssl.create_default_context(cafile=smtp.cafile)
            server = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=ctx)
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
    except (OSError, smtplib.SMTPException) as e:
        return Outcome("temporary", f"cannot connect to {smtp.host}:{smtp.port}: {e}", {})
    if server.sock is not None:
        # DATA's final "." is a small write right after another: with Nagle's algorithm it
        # waits for the server's delayed ACK (40 ms here), and the duplicate window with it.
        server.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return _transaction(server, smtp, envelope, chunks, before_end)
    except smtplib.SMTPResponseException as e:
        kind: Literal["temporary", "permanent"] = "permanent" if e.smtp_code >= 500 \
            else "temporary"
        if isinstance(e, smtplib.SMTPAuthenticationError):
            kind = "temporary"  # the box's setup is wrong, not the message: keep it
        return Outcome(kind, f"{e.smtp_code} {_text(e.smtp_error)}", {})
    except (OSError, smtplib.SMTPException) as e:
        return Outcome("temporary", f"{type(e).__name__}: {e}", {})
    finally:
        try:
            server.quit()
        except (OSError, smtplib.SMTPException):
            server.close()


def _transaction(server: smtplib.SMTP, smtp: Smtp, envelope: Map, chunks: Iterable[bytes],
                 before_end: Callable[[], None]) -> Outcome:
    server.ehlo_or_helo_if_needed()
    if smtp.security == "starttls":
        server.starttls(context=ssl.create_default_context(cafile=smtp.cafile))
        server.ehlo()
    if smtp.user is not None:
        server.login(smtp.user, smtp.password or "")
    code, reply = server.mail(envelope["from"])
    if code != 250:
        return Outcome("permanent" if code >= 500 else "temporary", f"{code} {_text(reply)}", {})
    refused: dict[str, str] = {}
    temporary = False
    for rcpt in envelope["rcpt"]:
        code, reply = server.rcpt(rcpt)
        if code not in (250, 251):
            refused[rcpt] = f"{code} {_text(reply)}"
            temporary |= code < 500
    if len(refused) == len(envelope["rcpt"]):
        server.rset()
        first = next(iter(refused.values()))
        return Outcome("temporary" if temporary else "permanent",
                       f"every recipient refused: {first}", refused)
    code, reply = server.docmd("DATA")
    if code != 354:
        return Outcome("permanent" if code >= 500 else "temporary", f"{code} {_text(reply)}",
                       refused)
    stuffer = DotStuffer()
    for chunk in chunks:
        server.send(stuffer.feed(chunk))
    before_end()
    server.send(stuffer.end())
    code, reply = server.getreply()
    if code != 250:
        return Outcome("permanent" if code >= 500 else "temporary", f"{code} {_text(reply)}",
                       refused)
    return Outcome("sent", f"{code} {_text(reply)}", refused)


class Deliverer:
    def __init__(self, client: Client, smtp: Smtp, state_dir: Path,
                 config: MailConfig = MailConfig(), clock: Callable[[], float] = time.time,
                 ) -> None:
        self.client = client
        self.smtp = smtp
        self.config = config
        self.clock = clock
        self.mail = MailState()
        self.inflight = state_dir / INFLIGHT
        self._attempts: dict[bytes, tuple[int, float]] = {}  # mid -> (attempts, next try)
        self._renew_at = 0.0
        self.sent = 0

    # -- the loop ----------------------------------------------------------------------------
    def start(self, take_over: bool = False) -> None:
        """Read the mail held so far, check no other deliverer is active, announce this one."""
        for note in _held(self.client, 0):
            self.mail.add(note)
        me = self._me()
        others = {o: n for o, n in self.mail.active_deliverers(self.clock(),
                                                               self.config.lease).items()
                  if o != me}
        if others and not take_over:
            origin, n = next(iter(others.items()))
            raise DelivererActive(
                f"another deliverer is active in this group: member {origin.hex()[:8]}, "
                f"sending to {n.get('smtp', '?')}; stop it first, or pass --take-over if "
                "that machine is gone for good")
        for msg in self.mail.pending():
            if msg.deferred is not None and msg.deferred[0] == me:
                attempts = int(msg.deferred[1]["attempts"])
                at = float(msg.deferred[1].get("time", 0)) + self._delay(attempts)
                self._attempts[msg.mid] = (attempts, at)
        self._announce("active")
        if self.inflight.exists():
            mid = self.inflight.read_bytes()
            held = self.mail.messages.get(mid)
            if held is not None and held.receipt is None:
                log.warning("message %s was being sent when the deliverer stopped: the server "
                            "may have it already; sending it again (it may arrive twice)",
                            mid.hex()[:12])
            self.inflight.unlink()

    def run(self, stop: Callable[[], bool]) -> None:
        self.deliver_due()
        while not stop():
            for note in self.client.follow(self.mail.next_index, app=APP,
                                           timeout=self.config.idle):
                self.mail.add(note)
                self.deliver_due()
                if stop():
                    break
            self.deliver_due()
        self._announce("stopped")

    def deliver_due(self) -> None:
        now = self.clock()
        if now >= self._renew_at:
            self._announce("active")
        for msg in self.mail.pending():
            attempts, at = self._attempts.get(msg.mid, (0, 0.0))
            if at <= now:
                self._deliver(msg, attempts)

    # -- one message -------------------------------------------------------------------------
    def _deliver(self, msg: Message, attempts: int) -> None:
        env = msg.envelope
        assert env is not None
        first = float(env.get("time", self.clock()))  # the author's clock: a LAN's agree
        outcome = send(self.smtp, env, self._chunks(msg), lambda: self._mark(msg.mid),
                       self.config.timeout)
        if outcome.status == "temporary":
            attempts += 1
            if self.clock() - first < self.config.give_up:
                delay = self._delay(attempts)
                self._attempts[msg.mid] = (attempts, self.clock() + delay)
                log.info("message %s deferred (attempt %d, next in %.0fs): %s",
                         msg.mid.hex()[:12], attempts, delay, outcome.reply)
                self.mail.add(self.client.publish(notes.encode(
                    APP, k="deferred", mid=msg.mid, reply=outcome.reply, attempts=attempts,
                    time=self.clock())))
                self._clear()
                return
            outcome = Outcome("permanent", f"gave up after {attempts} attempts: "
                              f"{outcome.reply}", outcome.rcpt)
        status = "sent" if outcome.status == "sent" else "failed"
        receipt = self.client.publish(notes.encode(
            APP, k="receipt", mid=msg.mid, status=status, reply=outcome.reply,
            rcpt=outcome.rcpt, time=self.clock()))
        self._clear()
        self.mail.add(receipt)
        self._attempts.pop(msg.mid, None)
        self.sent += status == "sent"
        log.info("message %s %s: %s", msg.mid.hex()[:12], status, outcome.reply)

    def _delay(self, attempts: int) -> float:
        return float(min(self.config.retry_base * 2.0 ** (attempts - 1), self.config.retry_max))

    def _chunks(self, msg: Message) -> Iterator[bytes]:
        assert msg.envelope is not None
        for n in range(msg.envelope["parts"]):
            found, _ = self.client.read(msg.parts[n], 1)
            part = notes.decode(found[0]["body"], APP) if found else None
            if part is None or part.get("mid") != msg.mid or part.get("n") != n:
                raise OSError(f"part {n} of message {msg.mid.hex()[:12]} is not in the store")
            yield part["data"]

    def _mark(self, mid: bytes) -> None:
        tmp = self.inflight.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(mid)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.inflight)

    def _clear(self) -> None:
        if self.inflight.exists():
            self.inflight.unlink()

    def _announce(self, state: str) -> None:
        self._renew_at = self.clock() + self.config.renew
        self.mail.add(self.client.publish(notes.encode(
            APP, k="deliverer", state=state, smtp=f"{self.smtp.host}:{self.smtp.port}",
            time=self.clock())))

    def _me(self) -> bytes:
        status = self.client.status()
        return bytes.fromhex(status["node"])


class DelivererActive(Exception):
    """Another member's deliverer is active."""


def _held(client: Client, start: int) -> Iterator[Map]:
    """The group's mail notes held now, from `start` (the store's app index: mail alone)."""
    return read_until(client.read, int(client.status()["notes"]), start, APP)
