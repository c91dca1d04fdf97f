"""The mail outbox: zflood-sendmail on an offline laptop, a deliverer on the box, a real SMTP
server (aiosmtpd on loopback) receiving each message once, receipts back on the laptop."""

from __future__ import annotations

import email
import io
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from daemons import ENV, STOP_TIMEOUT, WAIT, Daemons, member, short_dir, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from zflood.apps.mail.deliver import DotStuffer
from zflood.apps.mail.message import (
    EX_DATAERR,
    EX_NOUSER,
    EX_USAGE,
    MAX_MESSAGE,
    MailError,
    parse_args,
    read_message,
)

SENDMAIL = [sys.executable, "-c", "import sys; from zflood.apps.mail.cli import sendmail_main;"
            " sys.exit(sendmail_main())"]
ZFLOOD = [sys.executable, "-m", "zflood"]


# -- the command line ------------------------------------------------------------------------

def test_sendmail_takes_what_mutt_and_git_send_email_pass() -> None:
    mutt = parse_args(["-oem", "-oi", "--", "ann@example.org", "bob@example.org"])
    assert mutt.recipients == ["ann@example.org", "bob@example.org"] and not mutt.dot_ends
    git = parse_args(["-i", "-f", "me@example.org", "ann@example.org"])
    assert git.sender == "me@example.org" and git.recipients == ["ann@example.org"]
    joined = parse_args(["-fme@example.org", "-FMe Myself", "-t"])
    assert joined.sender == "me@example.org" and joined.full_name == "Me Myself"
    assert joined.from_headers and joined.dot_ends


@pytest.mark.parametrize("argv, status", [
    ([], EX_USAGE), (["-Z"], EX_USAGE), (["-f"], EX_USAGE), (["-bs"], EX_USAGE),
    (["not an address"], EX_NOUSER),
])
def test_sendmail_refuses_a_bad_command_line(argv: list[str], status: int) -> None:
    with pytest.raises(MailError) as e:
        parse_args(argv)
    assert e.value.status == status


def test_sendmail_in_a_state_directory_of_no_group_exits_ex_config(tmp_path: Path) -> None:
    """A setup to make, not a moment to wait out: EX_CONFIG (78), not EX_TEMPFAIL (75), so a
    mail client does not retry it for days; one line, no traceback."""
    done = subprocess.run([*SENDMAIL, "--state", str(tmp_path / "none"), "ann@example.org"],
                          input=b"Subject: x\n\nhi\n", capture_output=True, timeout=30,
                          check=False)
    assert done.returncode == 78, done
    assert done.stderr.decode().count("\n") == 1 and b"in no group yet" in done.stderr


def test_dash_t_takes_recipients_from_headers_and_removes_bcc() -> None:
    msg = (b"From: me@example.org\nTo: Ann <ann@example.org>\nCc: bob@example.org\n"
           b"Bcc: secret@example.org,\n  hidden@example.org\nSubject: hi\n\nbody\n.\nafter\n")
    sub = parse_args(["-t"])
    out = b"".join(read_message(io.BytesIO(msg), sub, "fallback@here"))
    assert sub.recipients == ["ann@example.org", "bob@example.org", "secret@example.org",
                              "hidden@example.org"]
    assert b"Bcc" not in out and b"hidden" not in out
    assert out.endswith(b"\n\nbody\n")  # a lone "." ends the message without -i
    assert sub.subject == "hi" and sub.sender == "me@example.org"
    parsed = email.message_from_bytes(out)
    assert parsed["Date"] and parsed["Message-ID"].endswith("@example.org>")  # added, as sendmail


def test_a_message_keeps_its_own_date_and_message_id() -> None:
    msg = (b"Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <x@y>\nFrom: a@b.c\n"
           b"Subject: s\n\nbody\n")
    out = b"".join(read_message(io.BytesIO(msg), parse_args(["-i", "d@e.f"]), "m@x"))
    assert out == msg


def _unstuff(data: bytes) -> bytes:
    """What an SMTP server makes of DATA: lines up to the lone ".", leading dots removed."""
    lines = data.split(b"\r\n")
    assert lines[-2:] == [b".", b""], data
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\n"
                    for line in lines[:-2])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\n", b"\r", b"\r\n", b"..", b"x.y"]),
                max_size=40), st.lists(st.integers(0, 60), max_size=6))
def test_dot_stuffing_survives_any_chunking(pieces: list[bytes], cuts: list[int]) -> None:
    message = b"".join(pieces)
    normal = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    bounds = sorted({0, len(message), *(min(c, len(message)) for c in cuts)})
    s = DotStuffer()
    out = b"".join(s.feed(message[a:b]) for a, b in itertools.pairwise(bounds))
    out += s.end()
    assert b"\n" not in out.replace(b"\r\n", b"")  # CRLF only
    expected = normal if normal.endswith(b"\n") or not normal else normal + b"\n"
    assert _unstuff(out) == expected


# -- a real SMTP server ----------------------------------------------------------------------

class Inbox:
    """What the SMTP server received; a RCPT to a `refused` address gets 550."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refused = {"nobody@example.org"}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if address in self.refused:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        with self.lock:
            self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 2.0.0 queued as zf" + str(len(self.messages))

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(email.message_from_bytes(m[2])["Subject"]) for m in self.messages]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with socket.socket() as s:  # aiosmtpd's controller needs a port it can connect to
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            data_size_limit=64 * 2**20)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_dir("zm") as path:
        yield path


def sendmail(state: Path, message: bytes, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SENDMAIL, "--state", str(state), *argv], input=message,
                          capture_output=True, timeout=30, env=ENV, check=False)


def mail_queue(state: Path) -> list[dict[str, Any]]:
    import json

    out = subprocess.run([*ZFLOOD, "--state", str(state), "mail", "queue", "--json"],
                         capture_output=True, text=True, timeout=30, env=ENV, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


class Deliverer:
    """`zflood mail deliver` as a process, stopped by pid with a timeout."""

    def __init__(self, state: Path, port: int, *extra: str) -> None:
        self.log = state.parent / f"{state.name}-deliver.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*ZFLOOD, "--state", str(state), "mail", "deliver", "--smtp",
                 f"127.0.0.1:{port}", *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=ENV)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError("the deliverer ignored SIGTERM") from None


def _message(i: int, to: str = "ann@example.org") -> bytes:
    return (f"From: me@example.org\nTo: {to}\nSubject: message {i}\n\n"
            f"line one of {i}\n.leading dot\n").encode()


def test_offline_laptop_queues_the_box_delivers_each_once_and_receipts_come_back(
    tmp: Path, smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    laptop, box = tmp / "laptop", tmp / "box"
    code = member(laptop)
    member(box, code)
    subprocess.run([*ZFLOOD, "--state", str(box), "name", "box-host"], capture_output=True,
                   timeout=30, env=ENV, check=True)
    # offline: the laptop's daemon is not running; mutt calls `sendmail -oem -oi -- RCPT`
    for i in range(3):
        done = sendmail(laptop, _message(i), "-oem", "-oi", "--", "ann@example.org")
        assert done.returncode == 0, done.stderr
    done = sendmail(laptop, _message(9, "nobody@example.org"), "-oi", "nobody@example.org")
    assert done.returncode == 0, done.stderr
    states = {row["subject"]: row["state"] for row in mail_queue(laptop)}
    assert states == {"message 0": "queued", "message 1": "queued", "message 2": "queued",
                      "message 9": "queued"}
    with Daemons() as daemons:
        b = daemons(box)
        deliverer = Deliverer(box, port)
        try:
            wait_for(lambda: "delivering" in deliverer.text(), WAIT, "the deliverer to start")
            a = daemons(laptop, b.listen)  # the laptop comes back
            wait_for(lambda: len(inbox.messages) >= 3, WAIT, "three messages at the server",
                     deliverer.text)

            def settled() -> list[dict[str, Any]] | None:
                rows = [dict(r) for r in _queue_online(a)]
                return rows if all(r["state"] in ("sent", "failed") for r in rows) else None

            rows = wait_for(settled, WAIT, "receipts on the laptop", deliverer.text)
        finally:
            assert deliverer.stop() == 0, deliverer.text()
    assert sorted(inbox.subjects()) == ["message 0", "message 1", "message 2"]
    by_subject = {r["subject"]: r for r in rows}
    for i in range(3):
        assert by_subject[f"message {i}"]["state"] == "sent"
        assert by_subject[f"message {i}"]["reply"].startswith("250")
    failed = by_subject["message 9"]
    assert failed["state"] == "failed" and "550" in failed["reply"]
    body = inbox.messages[0][2]
    assert b"\n.leading dot" in body.replace(b"\r\n", b"\n")  # un-stuffed by the server
    # the laptop, offline again, still shows every fate, and who sent it by name
    assert {r["subject"]: r["state"] for r in mail_queue(laptop)}["message 1"] == "sent"
    human = subprocess.run([*ZFLOOD, "--state", str(laptop), "mail", "queue"],
                           capture_output=True, text=True, timeout=30, env=ENV, check=True)
    assert "sent by box-host" in human.stdout, human.stdout


def _queue_online(daemon: Any) -> list[dict[str, Any]]:
    from zflood.apps.mail.cli import _row
    from zflood.apps.mail.queue import MailState

    mail = MailState()
    start = 0
    while True:
        batch, start = daemon.client.read(start)
        if not batch:
            break
        for note in batch:
            mail.add(note)
    return [_row(m) for m in mail.queue()]


def test_a_second_deliverer_refuses_while_one_is_active(tmp: Path, smtp: tuple[Inbox, int],
                                                        ) -> None:
    _, port = smtp
    a_state, b_state = tmp / "a", tmp / "b"
    code = member(a_state)
    member(b_state, code)
    with Daemons() as daemons:
        a = daemons(a_state)
        b = daemons(b_state, a.listen)
        wait_for(lambda: len(a.linked()) == 1 and len(b.linked()) == 1, WAIT, "a link")
        first = Deliverer(a_state, port)
        try:
            wait_for(lambda: "delivering" in first.text(), WAIT, "the first deliverer")
            wait_for(lambda: any(n["body"][:1] and b"deliverer" in n["body"]
                                 for n in _bytes_notes(b)), WAIT, "its note at b")
            second = Deliverer(b_state, port)
            assert second.proc.wait(timeout=WAIT) != 0
            assert "another deliverer is active" in second.text()
        finally:
            assert first.stop() == 0


def _bytes_notes(daemon: Any) -> list[dict[str, Any]]:
    batch, _ = daemon.client.read(0)
    return [n for n in batch if isinstance(n["body"], bytes)]


def test_a_deliverer_killed_mid_run_sends_nothing_twice_outside_the_window(
    tmp: Path, smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    seed = int(os.environ.get("ZFLOOD_TEST_SEED", "7"))
    rng = random.Random(seed)
    box = tmp / "box"
    member(box)
    total = 40
    for i in range(total):
        assert sendmail(box, _message(i), "-i", "ann@example.org").returncode == 0
    warned: set[str] = set()  # ids (12 hex) the deliverer said may go out twice
    with Daemons() as daemons:
        box_daemon = daemons(box)
        while len(set(inbox.subjects())) < total:
            deliverer = Deliverer(box, port)
            wait_for(lambda d=deliverer: "delivering" in d.text(),  # type: ignore[misc]
                     WAIT, "the deliverer to start", deliverer.text)
            # kill -9 once it has sent a few more: anywhere in a message's transaction
            target = min(total, len(set(inbox.subjects())) + rng.randint(1, 4))
            wait_for(lambda t=target: len(set(inbox.subjects())) >= t,  # type: ignore[misc]
                     WAIT, f"{target} messages (seed {seed})", deliverer.text)
            deliverer.stop(signal.SIGKILL)
            for line in deliverer.text().splitlines():
                if "may arrive twice" in line:
                    warned.add(line.split("message ", 1)[1][:12])
            deliverer.log.unlink()
        ids = {r["subject"]: r["id"][:12] for r in _queue_online(box_daemon)}
    counts: dict[str, int] = {}
    for s in inbox.subjects():
        counts[s] = counts.get(s, 0) + 1
    twice = {ids[s] for s, n in counts.items() if n > 1}
    assert len(counts) == total and max(counts.values()) <= 2, (seed, counts)
    # each duplicate is a message the restarted deliverer said was inside the window
    assert twice <= warned, (seed, twice, warned)
    print(f"seed {seed}: {len(twice)} of {total} sent twice, each inside the stated window")


def _store_size(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("node.db*"))


def test_a_25_mib_message_goes_out_whole_and_a_larger_one_is_refused(
    tmp: Path, smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    box = tmp / "box"
    member(box)
    head = (b"Date: Wed, 2 Dec 2026 07:00:00 +0000\nMessage-ID: <big@example.org>\n"
            b"From: me@example.org\nTo: ann@example.org\nSubject: big\n\n")  # as mutt sends
    line = b"0123456789abcdef" * 4 + b"\n"  # 65 bytes a line
    body = line * ((MAX_MESSAGE - len(head)) // len(line))
    done = sendmail(box, head + body, "-i", "ann@example.org")
    assert done.returncode == 0, done.stderr
    held = _store_size(box)
    too_big = sendmail(box, head + body + line * 2, "-i", "ann@example.org")
    assert too_big.returncode == EX_DATAERR
    assert _store_size(box) < held + 2**20  # nothing of it was published
    assert too_big.stderr.decode().count("\n") == 1 and b"exceeds 25 MiB" in too_big.stderr
    with Daemons() as daemons:
        daemons(box)
        deliverer = Deliverer(box, port)
        try:
            wait_for(lambda: inbox.messages, 3 * WAIT, "the big message", deliverer.text)
        finally:
            assert deliverer.stop() == 0
    received = inbox.messages[0][2].replace(b"\r\n", b"\n")
    assert received == head + body
    assert [s for s in inbox.subjects()] == ["big"]  # the refused one left nothing to send


def test_systemd_analyze_verify_accepts_the_deliverers_unit(tmp: Path) -> None:
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    root = Path(__file__).resolve().parent.parent / "systemd"
    stand_in = tmp / "zflood"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    units = tmp / "units"
    units.mkdir()
    for name, instance in (("zflood-mail@.service", "zflood-mail@family.service"),
                           ("zflood@.service", "zflood@family.service")):
        text = (root / name).read_text()
        for exe in ("/opt/zflood/bin/zflood", "/usr/local/bin/zflood"):
            text = text.replace(exe, str(stand_in))
        (units / instance).write_text(text)
    text = (root / "zflood-mail@.service").read_text()
    assert "LoadCredential=smtp-password:" in text and "--password-file" in text
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(units / "zflood-mail@family.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    ours = [line for line in (done.stdout + done.stderr).splitlines()
            if "zflood-mail" in line or str(units) in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_a_second_deliverer_on_the_same_member_refuses_and_the_first_runs_on(
    tmp: Path, smtp: tuple[Inbox, int],
) -> None:
    _, port = smtp
    state = tmp / "a"
    member(state)
    with Daemons() as daemons:
        daemons(state)
        first = Deliverer(state, port)
        try:
            wait_for(lambda: "delivering" in first.text(), WAIT, "the first deliverer")
            second = Deliverer(state, port)
            assert second.proc.wait(timeout=WAIT) == 1
            assert "a deliverer already runs for this member" in second.text()
            assert first.proc.poll() is None
        finally:
            assert first.stop() == 0


def test_deliver_refuses_a_password_file_without_a_login(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    p = subprocess.run([*ZFLOOD, "--state", str(state), "mail", "deliver", "--smtp",
                        "127.0.0.1:25", "--password-file", "/etc/hostname"],
                       capture_output=True, text=True, timeout=30, env=ENV, check=False)
    assert p.returncode == 2 and p.stderr == "zflood: --password-file needs --login\n"
