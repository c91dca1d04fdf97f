"""Daemon benchmark: two real `zflood run` processes on loopback, beside a bare ZeroMQ floor.

    python tools/bench_daemon.py            # 1,000,000 notes, 2,000 latency samples
    python tools/bench_daemon.py --quick    # 100,000 notes, 500 samples

Figures, all from this one run:
  - bulk sync: daemon A holds N notes (100-byte bodies), B starts empty; notes/s from B's
    start until B holds all N (B's store, signatures checked, over CurveZMQ);
  - status latency during the bulk sync: `status` on B's control socket (the daemon taking
    the notes in), and on A's (the one serving them), asked back to back with a 10 ms pause
    from the sync's start to its end; p50 and p99 (the loop answering while it stores);
  - live latency: publish one note on A through its control socket, time until a plain SUB
    on B's PUB socket has it; p50 and p99;
  - the floor for both: a bare DEALER -> ROUTER pipe on loopback (no CURVE, no store, no
    engine) moving the same frames: the sync's NOTES batches, and one push-sized frame
    bounced back for the latency (half the round trip).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import zmq

from zflood import wire
from zflood.demo import wait
from zflood.endpoints import tcp_port
from zflood.identity import Group
from zflood.local import Client
from zflood.statedir import endpoints_of, open_node, read_endpoints, save_group

BODY = b"x" * 100


class Daemon:
    def __init__(self, state: Path, port: int, peer: int | None) -> None:
        argv = [sys.executable, "-m", "zflood", "--state", str(state), "run", "--no-discovery",
                "--listen", f"tcp://127.0.0.1:{port}"]
        if peer:
            argv += ["--peer", f"tcp://127.0.0.1:{peer}"]
        self.state = state
        self.log = open(state / "log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stderr=self.log)
        ends = wait(self._ends, time.monotonic() + 30, f"daemon in {state}")
        self.client = Client(ends["control"][0], ends["pub"][0], timeout=30)
        self.pub = ends["pub"][0]

    def _ends(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise SystemExit(f"daemon exited: see {self.state / 'log'}")
        return endpoints_of(self.state, self.proc.pid)

    def count(self) -> int:
        return int(self.client.status()["notes"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.log.close()


def prepare(root: Path, n: int) -> tuple[Path, Path, list[bytes]]:
    group = Group.new()
    a, b = root / "a", root / "b"
    for state in (a, b):
        save_group(state, group)
    node = open_node(a, group, create=True)
    for i in range(0, n, 10_000):
        node.publish_many([BODY] * min(10_000, n - i))
    frames = [wire.encode(batch) for batch in node.export()]
    node.close()
    open_node(b, group, create=True).close()
    return a, b, frames


def bulk_floor(frames: list[bytes]) -> float:
    """Seconds to move `frames` DEALER -> ROUTER on loopback, received and counted."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hi")
    router.recv_multipart()
    done = threading.Event()

    def sink() -> None:
        for _ in frames:
            router.recv_multipart()
        done.set()

    start = time.perf_counter()
    thread = threading.Thread(target=sink)
    thread.start()
    for frame in frames:
        dealer.send_multipart([b"D", frame])
    thread.join(timeout=300)
    seconds = time.perf_counter() - start
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    return seconds


def latency_floor(frame: bytes, samples: int) -> list[float]:
    """One-way latency of a push-sized frame: half a DEALER -> ROUTER -> DEALER round trip
    between two processes' worth of sockets (an echo thread here)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def echo() -> None:
        for _ in range(samples + 1):
            router.send_multipart(router.recv_multipart())

    thread = threading.Thread(target=echo)
    thread.start()
    dealer.send(frame)
    dealer.recv()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        dealer.send(frame)
        dealer.recv()
        out.append((time.perf_counter() - t0) / 2)
    thread.join(timeout=30)
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    return out


def live_latency(a: Daemon, b: Daemon, samples: int) -> list[float]:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(b.pub)
    sub.rcvtimeo = 10_000
    # the subscription takes effect asynchronously: publish until one arrives
    wait(lambda: a.client.publish("warm-up") and sub.poll(200), time.monotonic() + 30,
         "B's PUB to deliver")
    while sub.poll(0):
        sub.recv_multipart()
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        a.client.publish(f"live {i}")
        while True:
            note = cbor2.loads(sub.recv_multipart()[-1])
            if note["body"] == f"live {i}":
                break
        out.append(time.perf_counter() - t0)
    sub.close(linger=0)
    ctx.term()
    return out


class StatusProbe(threading.Thread):
    """Times `status` on one daemon, 10 ms apart, until stopped (its own Client: one per
    thread)."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self.client = Client(daemon.client.control, timeout=30)
        self.times: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.perf_counter()
            self.client.status()
            self.times.append(time.perf_counter() - t0)
            self.halt.wait(0.01)
        self.client.close()

    def stop(self) -> list[float]:
        self.halt.set()
        self.join(timeout=60)
        return self.times


def pct(values: list[float], q: float) -> float:
    """The q-th percentile in ms, within the values seen (a status that answered only a few
    times during the sync must not be extrapolated past its slowest answer)."""
    if len(values) < 2:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 notes, 500 samples")
    args = parser.parse_args()
    n, samples = (100_000, 500) if args.quick else (1_000_000, 2_000)
    print(f"zflood daemon benchmark: {n:,} notes, {samples:,} latency samples")
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, b_dir, frames = prepare(Path(tmp), n)
        floor = bulk_floor(frames)
        a = Daemon(a_dir, 0, None)
        port = tcp_port(read_endpoints(a_dir)["listen"])
        start = time.perf_counter()
        b = Daemon(b_dir, 0, port)
        probes = [StatusProbe(b), StatusProbe(a)]
        for probe in probes:
            probe.start()
        try:
            try:
                wait(lambda: b.count() >= n, time.monotonic() + 600, "the bulk sync")
                sync = time.perf_counter() - start
            finally:
                on_b, on_a = (probe.stop() for probe in probes)
            print(f"bulk sync, two daemons      {n / sync:>10,.0f} notes/s"
                  f" ({sync:.1f} s, from B's start)")
            print(f"  floor: bare DEALER/ROUTER {n / floor:>10,.0f} notes/s"
                  f" ({len(frames):,} frames)")
            for name, times in (("B (storing)", on_b), ("A (serving)", on_a)):
                print(f"status during the sync, {name}  p50 {pct(times, 50):.1f} ms   "
                      f"p99 {pct(times, 99):.1f} ms   max {1000 * max(times):.1f} ms"
                      f" ({len(times):,} calls)")
            live = live_latency(a, b, samples)
        finally:
            a.stop()
            b.stop()
    push = wire.encode_notes(bytes(32), 1, bytes(32), [BODY], bytes(64))
    bare = latency_floor(push, samples)
    print(f"live latency, publish on A -> SUB on B   p50 {pct(live, 50):.2f} ms   "
          f"p99 {pct(live, 99):.2f} ms")
    print(f"  floor: bare DEALER/ROUTER one way      p50 {pct(bare, 50):.3f} ms   "
          f"p99 {pct(bare, 99):.3f} ms")


if __name__ == "__main__":
    main()
