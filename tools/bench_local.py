"""Local API benchmark: catching up through a real daemon's control socket.

    python tools/bench_local.py             # 1,000,000 notes of 100 bytes, two rounds
    python tools/bench_local.py --quick     # 100,000 notes

A store of N notes is written first (in-process, as `zflood publish` offline would), then one
`zflood run` serves it and this process, as an app would, reads the whole history twice per
round, in the same run: with a plain loop of `Client.read` calls (the floor: nothing but the
requests), and with `Client.follow(0)` (subscribed to PUB too, gapless and duplicate-free),
stopping once it has yielded N notes. Printed: notes/s of each, per round, and the ratio of
follow to read. Goal: follow at least 100,000 notes/s and at least half the read loop's rate.

One note in every 1,000 is a chat app note (a CBOR map with "app": "chat"); each round also
times `Client.follow(0, app="chat")` until it has yielded them all, beside the whole log's
time: an app's catch-up costs in proportion to its own notes, not to the log.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2

from zflood.demo import wait
from zflood.identity import Group
from zflood.local import Client
from zflood.statedir import endpoints_of, open_node, save_group

BODY = b"x" * 100
CHAT_EVERY = 1000


def prepare(state: Path, n: int) -> int:
    """A store of `n` notes, one in CHAT_EVERY a chat note; returns how many those are."""
    group = Group.new()
    save_group(state, group)
    node = open_node(state, group, create=True)
    chats = 0
    for i in range(0, n, 10_000):
        bodies: list[str | bytes] = [BODY] * min(10_000, n - i)
        for j in range(0, len(bodies), CHAT_EVERY):
            bodies[j] = cbor2.dumps({"app": "chat", "text": "x" * 80})
            chats += 1
        node.publish_many(bodies)
    node.close()
    return chats


def follow_app(client: Client, chats: int) -> float:
    """Seconds until `follow(0, app="chat")` has yielded all `chats` chat notes."""
    began = time.perf_counter()
    got = 0
    for _ in client.follow(0, app="chat", timeout=30):
        got += 1
        if got == chats:
            return time.perf_counter() - began
    raise SystemExit(f"follow(app) stopped after {got} of {chats} notes")


def read_loop(client: Client, n: int) -> float:
    """Seconds to read notes 0..n-1 with plain `read` calls."""
    began = time.perf_counter()
    start = got = 0
    while got < n:
        notes, start = client.read(start)
        if not notes:
            raise SystemExit(f"the daemon holds only {start} notes")
        got += len(notes)
    return time.perf_counter() - began


def follow(client: Client, n: int) -> float:
    """Seconds until `follow(0)` has yielded notes 0..n-1, checked in order."""
    began = time.perf_counter()
    expected = 0
    for note in client.follow(0, timeout=30):
        if note["index"] != expected:
            raise SystemExit(f"follow yielded index {note['index']}, expected {expected}")
        expected += 1
        if expected == n:
            return time.perf_counter() - began
    raise SystemExit(f"follow stopped after {expected} of {n} notes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 notes instead of 1,000,000")
    ap.add_argument("--notes", type=int, help="history length (overrides --quick)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    n = args.notes or (100_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="zfl-") as tmp:
        state = Path(tmp) / "a"
        began = time.perf_counter()
        chats = prepare(state, n)
        print(f"store of {n:,} notes of {len(BODY)} bytes ({chats:,} of them chat) written in "
              f"{time.perf_counter() - began:.1f}s", flush=True)
        argv = [sys.executable, "-m", "zflood", "--state", str(state), "run", "--no-discovery",
                "--listen", "tcp://127.0.0.1:0"]
        with open(Path(tmp) / "log", "wb") as log:
            proc = subprocess.Popen(argv, stderr=log)
            try:
                def ends() -> dict[str, Any] | None:
                    if proc.poll() is not None:
                        raise SystemExit(f"daemon exited: {(Path(tmp) / 'log').read_text()}")
                    return endpoints_of(state, proc.pid)

                found = wait(ends, time.monotonic() + 30, "the daemon's endpoints")
                with Client(found["control"][0], found["pub"][0], timeout=30) as client:
                    reads, follows, apps = [], [], []
                    for r in range(args.rounds):
                        reads.append(n / read_loop(client, n))
                        whole = follow(client, n)
                        follows.append(n / whole)
                        apps.append(follow_app(client, chats))
                        print(f"round {r + 1}: read loop {reads[-1]:,.0f} notes/s, "
                              f"follow(0) {follows[-1]:,.0f} notes/s "
                              f"({follows[-1] / reads[-1]:.0%}); follow(0, app='chat') "
                              f"{apps[-1] * 1000:.1f} ms for its {chats:,} notes, the whole "
                              f"log {whole:.2f} s", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
    read_rate, follow_rate = statistics.median(reads), statistics.median(follows)
    print(f"median over {args.rounds} rounds, {n:,} notes: read loop {read_rate:,.0f} notes/s; "
          f"follow(0) {follow_rate:,.0f} notes/s = {follow_rate / read_rate:.0%} of it "
          f"(goal: 100,000 notes/s and 50%); follow(0, app='chat') "
          f"{statistics.median(apps) * 1000:.1f} ms for {chats:,} chat notes")


if __name__ == "__main__":
    main()
