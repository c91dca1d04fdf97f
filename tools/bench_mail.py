"""Mail outbox figures: the duplicate window, delivery rate, and the deliverer's memory.

    python tools/bench_mail.py [--messages N]

A real daemon (`zflood run`, loopback, no discovery) and a real SMTP server (aiosmtpd) on
loopback. (1) N small messages are queued and delivered by a Deliverer in this process; for each
sent message the window in which a crash could send it twice (from just before DATA's final "."
until its receipt is durable, see zflood/apps/mail/deliver.py) is timed: p50, p99, max, and
messages per second. (2) `zflood mail deliver` as its own process: its peak RSS idle, then after
sending one 25 MiB message (both in this run), so the cost of a big message shows.
"""

from __future__ import annotations

import argparse
import io
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from zflood.apps.mail.deliver import Deliverer, Smtp
from zflood.apps.mail.message import MAX_MESSAGE, parse_args, submit
from zflood.demo import wait
from zflood.identity import Group
from zflood.local import Client
from zflood.statedir import endpoints_of, open_node, read_endpoints, save_group


class Inbox:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.count += 1
        return "250 OK"


class Timed(Deliverer):
    """A Deliverer that times each message's window: from its mark to its receipt."""

    windows: list[float]
    _marked: float | None = None

    def _mark(self, mid: bytes) -> None:
        super()._mark(mid)
        self._marked = time.perf_counter()

    def _clear(self) -> None:
        super()._clear()
        if self._marked is not None:
            self.windows.append(time.perf_counter() - self._marked)
            self._marked = None


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    smtp_server = Controller(inbox, hostname="127.0.0.1", port=port, data_size_limit=2**26)
    smtp_server.start()
    with tempfile.TemporaryDirectory(prefix="zbm") as tmp:
        state = Path(tmp) / "box"
        group = Group.new()
        save_group(state, group)
        open_node(state, group, create=True).close()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "zflood", "--state", str(state), "run", "--listen",
             "tcp://127.0.0.1:0", "--no-discovery"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ends = wait(lambda: endpoints_of(state, daemon.pid), time.monotonic() + 10,
                        "the daemon to start")
            client = Client(ends["control"][0], ends["pub"][0])
            message = b"From: me@example.org\nTo: ann@example.org\nSubject: s\n\n" + \
                b"a line of a short message\n" * 20
            for _ in range(args.messages):
                submit(client.publish, io.BytesIO(message), parse_args(["-i", "a@b.c"]), "m@x")
            d = Timed(client, Smtp("127.0.0.1", port), state)
            d.windows = []
            d.start()
            t0 = time.perf_counter()
            d.deliver_due()
            took = time.perf_counter() - t0
            assert inbox.count == args.messages, inbox.count
            w = sorted(d.windows)
            p99 = w[min(len(w) - 1, int(len(w) * 0.99))]
            print(f"delivered {args.messages} messages in {took:.2f} s: "
                  f"{args.messages / took:,.0f}/s")
            print(f"duplicate window (final '.' sent -> receipt durable): "
                  f"p50 {statistics.median(w) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
                  f"max {w[-1] * 1e3:.2f} ms")
            d._announce("stopped")
            client.close()
            _big(state, port, inbox)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
            smtp_server.stop()


def _big(state: Path, port: int, inbox: Inbox) -> None:
    deliver = subprocess.Popen(
        [sys.executable, "-m", "zflood", "--state", str(state), "mail", "deliver", "--smtp",
         f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        err = deliver.stderr
        assert err is not None
        wait(lambda: b"delivering" in err.readline(), time.monotonic() + 10,
             "the deliverer to start")
        idle = _vm_hwm(deliver.pid)
        with Client(read_endpoints(state)["control"][0]) as client:
            head = b"From: me@example.org\nTo: ann@example.org\nSubject: big\n\n"
            body = b"x" * 76 + b"\n"
            big = head + body * ((MAX_MESSAGE - len(head)) // len(body))
            before = inbox.count
            submit(client.publish, io.BytesIO(big), parse_args(["-i", "a@b.c"]), "m@x")
            t0 = time.perf_counter()
            wait(lambda: inbox.count > before, time.monotonic() + 60, "the big message")
            took = time.perf_counter() - t0
        peak = _vm_hwm(deliver.pid)
        print(f"one {len(big) / 2**20:.1f} MiB message delivered in {took:.2f} s; deliverer "
              f"peak RSS {idle / 2**20:.1f} MiB idle -> {peak / 2**20:.1f} MiB after it")
    finally:
        deliver.send_signal(signal.SIGTERM)
        deliver.wait(timeout=10)


if __name__ == "__main__":
    main()
