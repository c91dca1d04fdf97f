"""Chat figures: a line from one daemon to another's chat, and opening a long chat.

    python tools/bench_chat.py [--lines N] [--samples K]

(1) Two real daemons on loopback, linked. A chat line published on A (through its control
socket, as `zflood chat` does) is timed until a reader on B following the chat as the
interactive chat does (Client.follow, parsed as a chat line of its room) has it; beside it,
in the same run, a plain note timed until a plain SUB on B's PUB socket has it (the daemon's
own latency). p50 and p99 of each.
(2) A store holding N chat lines (default 1,000,000): `zflood chat log -n 50` as a command,
start to exit, with the daemon stopped and with it running; and the history the interactive
chat opens with (its last 200 lines) read through the running daemon.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from zflood.apps.chat import history
from zflood.apps.chat.lines import line, note
from zflood.apps.group import Online
from zflood.demo import wait
from zflood.identity import Group
from zflood.local import Client
from zflood.statedir import endpoints_of, open_node, save_group


class Daemon:
    def __init__(self, state: Path, *peers: str) -> None:
        argv = [sys.executable, "-m", "zflood", "--state", str(state), "run", "--no-discovery",
                "--listen", "tcp://127.0.0.1:0", *[a for p in peers for a in ("--peer", p)]]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        ends = wait(lambda: endpoints_of(state, self.proc.pid), time.monotonic() + 30,
                    f"the daemon in {state}")
        self.listen: str = ends["listen"]
        self.control: str = ends["control"][0]
        self.pub: str = ends["pub"][0]
        self.client = Client(self.control, self.pub, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _pcts(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"p50 {statistics.median(xs) * 1e3:.2f} ms, "
            f"p99 {xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3:.2f} ms")


def latency(root: Path, samples: int) -> None:
    group = Group.new()
    for name in ("a", "b"):
        save_group(root / name, group)
        open_node(root / name, group, create=True).close()
    a = Daemon(root / "a")
    b = Daemon(root / "b", a.listen)
    try:
        wait(lambda: any(p["state"] == "connected" for p in b.client.status()["peers"]),
             time.monotonic() + 30, "a link")
        got: dict[str, float] = {}
        ready = threading.Event()
        done = threading.Event()

        def chat_reader() -> None:
            with Client(b.control, b.pub) as c:
                start = c.status()["notes"]
                ready.set()
                for n in c.follow(start, timeout=10):
                    ln = line(n)
                    if ln is not None and ln.room == "bench":
                        got[ln.text] = time.perf_counter()
                    if done.is_set():
                        return

        reader = threading.Thread(target=chat_reader)
        reader.start()
        ready.wait(10)
        chat: list[float] = []
        raw: list[float] = []
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(b.pub)
        time.sleep(0.3)  # a SUB's subscription takes a moment to reach the PUB: no event says
        for i in range(samples):
            t0 = time.perf_counter()
            a.client.publish(note("bench", f"line {i}"))
            wait(lambda i=i: f"line {i}" in got, time.monotonic() + 10, "the chat line")  # type: ignore[misc]
            chat.append(got[f"line {i}"] - t0)
            while sub.poll(0):
                sub.recv_multipart()
            t0 = time.perf_counter()
            a.client.publish(f"plain {i}")
            while True:
                frames = sub.recv_multipart()
                if b"plain %d" % i in frames[-1]:
                    break
            raw.append(time.perf_counter() - t0)
        done.set()
        a.client.publish(note("bench", "end"))
        reader.join(15)
        sub.close(linger=0)
        ctx.term()
        print(f"chat line A -> B's chat reader ({samples} lines): {_pcts(chat)}")
        print(f"plain note A -> B's PUB socket (the daemon's own latency): {_pcts(raw)}")
    finally:
        b.stop()
        a.stop()


def long_chat(root: Path, lines: int) -> None:
    state = root / "long"
    group = Group.new()
    save_group(state, group)
    node = open_node(state, group, create=True)
    t0 = time.perf_counter()
    for base in range(0, lines, 10_000):
        with node.batch():
            node.publish_many([note("general", f"line {i} of a long chat")
                               for i in range(base, min(lines, base + 10_000))])
    node.close()
    print(f"wrote {lines:,} chat lines in {time.perf_counter() - t0:.1f} s")

    peaks: list[int] = []

    def chat_log() -> float:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "zflood", "--state", str(state), "chat",
                                 "log", "-n", "50"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, from the kernel
        proc.returncode = os.waitstatus_to_exitcode(status)
        took = time.perf_counter() - t
        peaks.append(usage.ru_maxrss)
        assert proc.returncode == 0 and out.count("\n") == 50, out[-500:]
        return took

    # The first command after the notes were written straight into the store (not through a
    # daemon, which keeps the member table as notes arrive) catches the table up: once.
    first = chat_log()
    stopped = [chat_log() for _ in range(3)]
    d = Daemon(state)
    try:
        running = [chat_log() for _ in range(3)]
        g = Online(d.control, d.pub)
        opens = []
        for _ in range(3):
            t = time.perf_counter()
            shown = history.last(g, "general", 200)
            opens.append(time.perf_counter() - t)
            assert len(shown) == 200
        g.close()
    finally:
        d.stop()
    empty = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import zflood.cli"], check=True)
    python = time.perf_counter() - empty
    print(f"`zflood chat log -n 50` on {lines:,} lines: daemon stopped "
          f"{min(stopped):.3f} s (of 3: {', '.join(f'{x:.3f}' for x in stopped)}), running "
          f"{min(running):.3f} s; of which starting Python with zflood.cli: {python:.3f} s")
    print(f"  (the first command after {lines:,} lines were written without a daemon caught "
          f"the member table up: {first:.2f} s, once)")
    print(f"  peak RSS of the command: {min(peaks) / 1024:.1f}-{max(peaks) / 1024:.1f} MiB")
    print(f"the interactive chat's opening history (200 lines) through the daemon: "
          f"{min(opens) * 1e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zbc") as tmp:
        latency(Path(tmp), args.samples)
        long_chat(Path(tmp), args.lines)


if __name__ == "__main__":
    main()
