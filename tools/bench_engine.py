"""Engine benchmark: publish rates, bulk sync, store-open time and memory, beside SQLite's floor.

    python tools/bench_engine.py            # full run: 100,000 and 1,000,000 notes
    python tools/bench_engine.py --quick    # 10x smaller, for a smoke test

Every figure comes from this one run on this machine:
  - single publishes into a durable store, alone, and while linked to a peer in another process
    that receives each note as it is published (over a socketpair), once for each Ed25519
    backend installed (zflood/identity.py); three rounds, each beside SQLite's
    one-commit-per-row floor, printed as the median and the range, because a shared 2-core
    machine moves any one round by 10-20%;
  - bulk sync of N notes with 100-byte bodies between two durable nodes over in-process
    channels (the simulator with zero latency), and SQLite's floor: batch inserts of the same
    rows into the same schema;
  - store-open time, replay time and peak RSS of a process that opens a store and replays
    every note (each checked against its hash link): the bulk-sync stores (one origin) and one
    of 8 origins taking turns;
  - bytes on disk per note for 100 B, 2 KiB and 64 KiB bodies (two origins taking turns,
    single publishes and batches), and the largest WAL seen while writing them;
  - what bounding the WAL costs: single publishes with the WAL's bound on this disk (an
    eighth of the free space, at most `wal_bytes`) beside the same with a WAL allowed to grow
    to 160 MiB between checkpoints and with a nearly full disk's bound (`wal_min`), in the
    same rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import select
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zflood import Node, identity
from zflood.config import DEFAULT, Config
from zflood.identity import GENESIS, SigningKey, note_id
from zflood.sim import Sim
from zflood.store import _SCHEMA, _SEQ_BITS, PAGE_SIZE, Row, Store

BODY = b"x" * 100
ROUNDS = 3  # of the single-publish measurements
MIXED_ORIGINS = 8  # in the store whose replay merges several logs
UNBOUNDED = Config(wal_bytes=160 * 1024 * 1024)  # about the WAL the old policy let grow
SMALL_DISK = Config(wal_bytes=DEFAULT.wal_min)  # the bound on a nearly full disk


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} /s"


def rates(n: int, seconds: list[float]) -> str:
    """The median rate of several rounds and their range."""
    r = [n / s for s in seconds]
    return f"{statistics.median(r):>12,.0f} /s   ({min(r):,.0f}-{max(r):,.0f})"


# -- a channel over a stream socket, for a peer in another process ------------------------------


class StreamChannel:
    """Length-prefixed frames over a blocking stream socket; the owner pumps receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._receive: Callable[[bytes], None] | None = None

    def send(self, frame: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(frame)) + frame)

    def on_receive(self, callback: Callable[[bytes], None]) -> None:
        self._receive = callback

    def on_close(self, callback: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        self.sock.close()

    def pump(self, block: bool) -> int:
        """Deliver every whole frame that has arrived; with `block`, wait for some first."""
        ready, _, _ = select.select([self.sock], [], [], None if block else 0)
        if not ready:
            return 0
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError
        self._buf += data
        n = 0
        while len(self._buf) >= 4:
            size = struct.unpack_from(">I", self._buf)[0]
            if len(self._buf) < 4 + size:
                break
            frame, self._buf = self._buf[4 : 4 + size], self._buf[4 + size :]
            assert self._receive is not None
            self._receive(frame)
            n += 1
        return n


def receiver(
    sock: socket.socket, path: str, want: int, report: multiprocessing.Queue[float]
) -> None:
    node = Node(path=path)
    ch = StreamChannel(sock)
    node.connect(ch)
    while node.count < want:
        with node.batch():  # one verify and one transaction for what arrived together
            ch.pump(block=True)
    report.put(time.perf_counter())
    node.close()


# -- the measurements ------------------------------------------------------------------------


def single_publishes(tmp: Path, n: int, config: Config = DEFAULT) -> float:
    name = "alone.db" if config is DEFAULT else f"alone-wal{config.wal_bytes >> 20}.db"
    node = Node(path=str(tmp / name), config=config)
    start = time.perf_counter()
    for _ in range(n):
        node.publish(BODY)
    seconds = time.perf_counter() - start
    node.close()
    return seconds


def linked_publishes(tmp: Path, n: int) -> tuple[float, float]:
    tmp.mkdir(exist_ok=True)
    ours, theirs = socket.socketpair()
    report: multiprocessing.Queue[float] = multiprocessing.Queue()
    ctx = multiprocessing.get_context("fork")
    peer = ctx.Process(target=receiver, args=(theirs, str(tmp / "peer.db"), n, report))
    peer.start()
    node = Node(path=str(tmp / "linked.db"))
    ch = StreamChannel(ours)
    node.connect(ch)
    while not all(p["ready"] for p in node.peers()):
        ch.pump(block=True)  # the hello exchange
    start = time.perf_counter()
    for i in range(n):
        node.publish(BODY)
        if i % 64 == 0:
            ch.pump(block=False)
    published = time.perf_counter() - start
    caught_up = report.get(timeout=600) - start
    peer.join(timeout=30)
    node.close()
    return published, caught_up


def floor_db(path: Path) -> sqlite3.Connection:
    """The store's schema and settings, without the store."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")  # as the store does
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA wal_autocheckpoint={DEFAULT.wal_bytes // PAGE_SIZE}")
    db.execute(f"PRAGMA journal_size_limit={DEFAULT.wal_bytes}")
    db.executescript(_SCHEMA)
    return db


def commit_per_row(tmp: Path, n: int) -> float:
    db = floor_db(tmp / "floor1.db")
    db.execute("INSERT INTO origins (origin) VALUES (?)", (b"o" * 32,))
    start = time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO log VALUES (?, ?, ?, NULL, ?)",
                   ((1 << _SEQ_BITS) | i, i, b"i" * 32, BODY))
    seconds = time.perf_counter() - start
    db.close()
    return seconds


def sqlite_floor(tmp: Path, n: int) -> float:
    """Batch inserts of the rows a sync stores (ids and a signature a batch precomputed)."""
    key = SigningKey()
    prev = bytes(32)
    ids = []
    for i in range(n):
        prev = note_id(key.public, i, prev, BODY)
        ids.append(prev)
    db = floor_db(tmp / f"floor{n}.db")
    db.execute("INSERT INTO origins (origin) VALUES (?)", (key.public,))
    seconds = 0.0
    for i in range(0, n, 1024):
        rows = [
            ((1 << _SEQ_BITS) | j, j, ids[j], None if (j + 1) % 1024 else b"s" * 64, BODY)
            for j in range(i, min(i + 1024, n))
        ]
        start = time.perf_counter()  # only SQLite's own work is timed
        db.execute("BEGIN")
        db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        seconds += time.perf_counter() - start
    db.close()
    return seconds


def make_source(path: Path, n: int) -> None:
    node = Node(path=str(path))
    for i in range(0, n, 10_000):
        node.publish_many([BODY] * min(10_000, n - i))
    node.close()


def bulk_sync(tmp: Path, source: Path, n: int) -> float:
    a = Node(path=str(source))
    b = Node(path=str(tmp / f"sink{n}.db"))
    sim = Sim()
    start = time.perf_counter()
    sim.connect_nodes(a, b)
    sim.run_until_quiescent()
    seconds = time.perf_counter() - start
    assert b.count == n, (b.count, n)
    a.close()
    b.close()
    return seconds


OPEN_AND_REPLAY = """
import sys, time
from zflood import Node
start = time.perf_counter()
node = Node(path=sys.argv[1])
opened = time.perf_counter() - start
count = 0
def handler(note):
    global count
    count += 1
start = time.perf_counter()
node.subscribe(handler)
replayed = time.perf_counter() - start
# VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(opened, replayed, count, hwm.split()[1])
"""


def open_and_replay(path: Path) -> tuple[float, float, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN_AND_REPLAY, str(path)], capture_output=True, text=True,
        check=True, timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])


def make_interleaved(path: Path, n: int, origins: int) -> None:
    """A store whose notes came from `origins` members taking turns, 100 at a time: replay
    then merges that many logs. Rows are written directly (ids and signatures are not what
    this measures; the hash links are, as replay checks them)."""
    store = Store(path)
    keys = [bytes([i]) * 32 for i in range(origins)]
    counts = [0] * origins
    prevs = [GENESIS] * origins
    for k in range(n // 100):
        o = k % origins
        rows: list[Row] = []
        for i in range(100):
            prevs[o] = note_id(keys[o], counts[o] + i, prevs[o], BODY)
            rows.append((prevs[o], None, BODY))
        store.append(keys[o], counts[o], rows)
        counts[o] += 100
    store.close()


def bytes_per_note(tmp: Path, size: int, total: int) -> tuple[float, int]:
    """Bytes on disk per note of `size` bytes (after a clean close), and the largest WAL
    seen: two origins taking turns, 25 single publishes here, then a batch of 25 relayed from
    the other (it arrives signed), as a member that publishes and syncs stores them."""
    path = tmp / f"dense{size}.db"
    a = Node(path=str(path))
    b = Node()
    sim = Sim()
    sim.connect_nodes(a, b)
    n = min(20_000, max(50, total // size))
    wal = 0
    body = os.urandom(size)
    while a.count < n:
        for _ in range(25):
            a.publish(body)
        b.publish_many([body] * 25)
        sim.run_until_quiescent()
        wal = max(wal, a._store.wal_size())
    held = a.count
    a.close()
    b.close()
    return path.stat().st_size / held, wal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    singles = 20_000 // scale
    sizes = [100_000 // scale, 1_000_000 // scale]
    print(f"zflood engine benchmark, Python {sys.version.split()[0]}, SQLite "
          f"{sqlite3.sqlite_version}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        alone: list[float] = []
        unbounded: list[float] = []
        small: list[float] = []
        floor1: list[float] = []
        linked: dict[str, list[float]] = {name: [] for name in identity.BACKENDS}
        caught_up = 0.0
        default = identity.backend()
        for r in range(ROUNDS):
            (tmp / f"round{r}").mkdir()
            alone.append(single_publishes(tmp / f"round{r}", singles))
            unbounded.append(single_publishes(tmp / f"round{r}", singles, UNBOUNDED))
            small.append(single_publishes(tmp / f"round{r}", singles, SMALL_DISK))
            floor1.append(commit_per_row(tmp / f"round{r}", singles))
            for name in identity.BACKENDS:  # the peer (forked) signs and checks with it too
                identity.use_backend(name)
                p, c = linked_publishes(tmp / f"round{r}" / name, singles)
                linked[name].append(p)
                caught_up = max(caught_up, c)
        identity.use_backend(default)
        print(f"single publish, durable, alone        {rates(singles, alone)}")
        share = statistics.median(unbounded) / statistics.median(alone)
        bound = Store(tmp / "bound.db").fit_wal()
        print(f"  the same, WAL up to 160 MiB         {rates(singles, unbounded)}"
              f"   -> this disk's {bound >> 20} MiB bound costs {1 - share:.0%} (medians)")
        share = statistics.median(unbounded) / statistics.median(small)
        print(f"  a nearly full disk's {DEFAULT.wal_min >> 20} MiB bound     "
              f"{rates(singles, small)}   -> costs {1 - share:.0%}")
        for name, seconds in linked.items():
            label = f"  linked, Ed25519 by {name}"
            print(f"{label:<38}{rates(singles, seconds)}")
        print(f"  (each peer held all {singles:,} notes {caught_up:.2f} s after the first"
              " publish, or sooner)")
        alone_share = statistics.median(floor1) / statistics.median(alone)
        print(f"  floor: SQLite, one commit per row   {rates(singles, floor1)}"
              f"   -> alone at {alone_share:.0%} (medians)")
        for n in sizes:
            source = tmp / f"source{n}.db"
            make_source(source, n)
            sync = bulk_sync(tmp, source, n)
            floor = sqlite_floor(tmp, n)
            print(f"bulk sync {n:>9,} notes               {rate(n, sync)}"
                  f"   floor: SQLite batch inserts {rate(n, floor)} -> at {floor / sync:.0%}")
        for size in (100, 2048, 65536):
            per, wal = bytes_per_note(tmp, size, 32 * 1024 * 1024 // scale)
            print(f"on disk per note of {size:>6,} B body    {per:>9,.0f} B = {per / size:.2f}x"
                  f"   (largest WAL seen: {wal / 1048576:.1f} MiB;"
                  f" bound {bound >> 20} MiB + one transaction)")
        stores = [(tmp / f"sink{n}.db", f"{n:>9,} notes") for n in sizes]
        make_interleaved(tmp / "mixed.db", sizes[-1], MIXED_ORIGINS)
        stores.append((tmp / "mixed.db", f"{sizes[-1]:,} of {MIXED_ORIGINS} origins"))
        for path, what in stores:
            opened, replayed, count, rss_kib = open_and_replay(path)
            print(f"open a store of {what:<22}{opened * 1000:8.1f} ms   replay all"
                  f" {count:,} in {replayed:.2f} s: peak RSS {rss_kib / 1024:.0f} MiB")
        print(f"(this process's peak RSS: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
