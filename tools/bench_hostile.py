"""Hostile-peer benchmark (issue 8): each attack against a real victim daemon, measured.

    python tools/bench_hostile.py                          # every attack, default sizes
    python tools/bench_hostile.py --attack want --wants 2000
    python tools/bench_hostile.py --attack bulk --bulk-notes 1000000

Each attack gets a world of its own: a group, a victim (`zflood run` in its own state
directory, listening on 127.0.0.1) and an honest member linked to it; the mdns attack runs its
world inside a network namespace made for it (only its loopback, removed afterwards), the
others on 127.0.0.1. The attacker is a separate process (tools/hostile_peer.py) that holds the
join code, or only sees the group's public id (mdns), or is a local client (reads). Every
process is stopped by pid with a timeout when its attack ends, pass or fail.

Figures, per attack (the window runs from the attacker being in position to it leaving):
  window     seconds the attack lasted
  cpu_s      victim CPU seconds (user + system, all threads: /proc/PID/stat) from the
             window's start until the victim answered promptly again
  rss        victim RSS before (MiB), its peak growth, and its growth once it answered again
  p50/p99/max  `status` round trips (ms) of a client polling the control socket back to back
             during the window; fail/n: calls with no answer within 5 s (counted as 5 s)
             of all calls made
  honest     notes the honest member published during the window (one every 0.25 s) that
             reached the victim's PUB socket within 1 s, of those published
  out/in     bytes the victim sent the attacker per byte the attacker sent it (engine frames)
  log        lines the victim wrote from the window's start until it answered again
  recover_s  seconds after the attacker left until a `status` round trip took <= 100 ms
  stop_s     seconds from SIGTERM to exit ("kill": it ignored SIGTERM for --stop-timeout)
  fds        victim open files before > peak
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cbor2
import hostile_peer  # beside this script: the attacker's side, run as a process of its own
import zmq

import zflood
from zflood.config import DEFAULT
from zflood.identity import Group
from zflood.local import Client, DaemonUnavailable
from zflood.statedir import endpoints_of, open_node, save_group

HERE = Path(__file__).resolve().parent
PEER = HERE / "hostile_peer.py"
START_TIMEOUT = 30.0  # a daemon writing its endpoints, an attacker getting in position
STATUS_TIMEOUT = 5.0  # the CLI's own client timeout: a status slower than this has failed
PROMPT = 0.1  # a status round trip this fast counts as the victim answering again
POLL_GAP = 0.02  # between two status calls of the poller
HONEST_EVERY = 0.25  # the honest member publishes this often
HONEST_LIMIT = 1.0  # ... and each note should reach the victim within this
SAMPLE_EVERY = 0.02  # RSS and open files sampled this often
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Origins a node holds at most (attack 1 goes past it), and per HELLO or HEADS frame (attack
# 3 stays within it); before heads were paged, one limit was both.
MAX_ORIGINS = int(getattr(DEFAULT, "max_origins", 4096))
HEADS_PAGE = int(getattr(DEFAULT, "heads_page", MAX_ORIGINS))
_UNSET = ("ZFLOOD_STATE", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY",
          "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
ENV = {k: v for k, v in os.environ.items() if k not in _UNSET}


class BenchError(Exception):
    """Something the benchmark itself needs did not happen: reported in one line."""


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)  # another process's state: nothing to await


# -- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """RSS and open files of one process every SAMPLE_EVERY, as (time, MiB, fds)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, int]] = []
        self._stop_ = threading.Event()

    def run(self) -> None:
        while not self._stop_.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), rss_mib(self.pid), open_files(self.pid)))
            self._stop_.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop_.set()
        if self.ident is not None:
            self.join(5)

    def peak(self, t0: float, t1: float) -> tuple[float, int]:
        inside = [(r, f) for t, r, f in self.samples if t0 <= t <= t1] or [(0.0, 0)]
        return max(r for r, _ in inside), max(f for _, f in inside)


class StatusPoller(threading.Thread):
    """`status` back to back on a client of its own: (start, seconds, answered)."""

    def __init__(self, control: str) -> None:
        super().__init__(daemon=True)
        self.control = control
        self.samples: list[tuple[float, float, bool]] = []
        self._stop_ = threading.Event()

    def run(self) -> None:
        with Client(self.control, timeout=STATUS_TIMEOUT) as client:
            while not self._stop_.is_set():
                t0 = time.monotonic()
                try:
                    client.status()
                    ok = True
                except DaemonUnavailable:
                    ok = False
                self.samples.append((t0, time.monotonic() - t0, ok))
                self._stop_.wait(POLL_GAP)

    def stop(self) -> None:
        self._stop_.set()
        if self.ident is not None:
            self.join(STATUS_TIMEOUT + 2)


class HonestProbe(threading.Thread):
    """The honest member publishes a note every HONEST_EVERY (through a client of its own);
    a SUB on the victim's PUB socket notes when each arrives."""

    def __init__(self, honest: Daemon, victim: Daemon) -> None:
        super().__init__(daemon=True)
        self.sent: dict[str, float] = {}
        self.got: dict[str, float] = {}
        self._client = Client(honest.control, timeout=STATUS_TIMEOUT)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(victim.pub)
        self._stop_ = threading.Event()
        self._warm()

    def _warm(self) -> None:
        """The subscription takes effect asynchronously, and the link may be young: publish
        until one arrives."""
        def arrived() -> bool:
            self._client.publish("warm-up")
            return bool(self._sub.poll(200))
        try:
            wait_for(arrived, START_TIMEOUT, "the honest member's note to reach the victim")
        except BaseException:
            self.close()
            raise
        while self._sub.poll(50):
            self._sub.recv_multipart()

    def run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self._stop_.is_set():
            now = time.monotonic()
            if now >= next_at:
                body = f"honest {i}"
                i += 1
                with contextlib.suppress(DaemonUnavailable):
                    self._client.publish(body)
                    self.sent[body] = now
                next_at = now + HONEST_EVERY
            if self._sub.poll(max(1, int((next_at - time.monotonic()) * 1000))):
                while True:
                    try:
                        frames = self._sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with contextlib.suppress(Exception):
                        body = cbor2.loads(frames[-1]).get("body")
                        if isinstance(body, str) and body.startswith("honest "):
                            self.got.setdefault(body, time.monotonic())

    def stop(self) -> None:
        self._stop_.set()
        if self.ident is not None:
            self.join(STATUS_TIMEOUT + 2)
        self.close()

    def close(self) -> None:
        self._sub.close(linger=0)
        self._ctx.term()
        self._client.close()

    def within(self, t0: float, t1: float) -> tuple[int, int]:
        sent = {b: t for b, t in self.sent.items() if t0 <= t <= t1}
        ok = sum(1 for b, t in sent.items() if self.got.get(b, t + 99) - t <= HONEST_LIMIT)
        return ok, len(sent)


# -- processes ---------------------------------------------------------------------------------


def stop_proc(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """SIGTERM by pid; seconds until it exited, or None if it had to be killed."""
    if proc.poll() is not None:
        return 0.0
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


class World:
    """One attack's group, directory, processes and (for mdns) network namespace; leaving it
    stops every process by pid (bounded), removes the namespace and the directory."""

    def __init__(self, name: str, netns: bool = False) -> None:
        self.name = name
        self.group = Group.new()
        self.dir = Path(tempfile.mkdtemp(prefix=f"zfh-{name}-"))  # short: ipc paths
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemons: list[Daemon] = []
        self.ns: str | None = None
        if netns:
            self.ns = f"zfh-{os.getpid()}-{secrets.token_hex(2)}"
            _ip("netns", "add", self.ns)
            _ip("-n", self.ns, "link", "set", "lo", "up")

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        for d in self.daemons:
            d.client.close()
        for proc in reversed(self.procs):
            stop_proc(proc, 5.0)
        if self.ns is not None:
            pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True,
                                  text=True, timeout=10, check=False).stdout.split()
            for pid in pids:  # ours: only this run ever started anything in it
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", self.ns)
        shutil.rmtree(self.dir, ignore_errors=True)

    def wrap(self, argv: list[str]) -> list[str]:
        return argv if self.ns is None else ["ip", "netns", "exec", self.ns, *argv]

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        # in our directory: `python -m zflood` must not pick up a zflood/ in the caller's cwd
        proc = subprocess.Popen(self.wrap(argv), env=ENV, cwd=self.dir, **kw)
        self.procs.append(proc)
        return proc

    def state(self, name: str, notes: int = 0, body: int = 100) -> Path:
        """A member's state directory holding `notes` of its own."""
        state = self.dir / name
        save_group(state, self.group)
        try:
            node = open_node(state, self.group, create=True)
        except TypeError:  # a build older than create= (a baseline run): it always created
            node = open_node(state, self.group)
        try:
            for i in range(0, notes, 10_000):
                node.publish_many([os.urandom(body // 2).hex()] * min(10_000, notes - i))
        finally:
            node.close()
        return state

    def daemon(self, state: Path, *peers: str, mdns: bool = False) -> Daemon:
        d = Daemon(self, state, list(peers), mdns)
        self.daemons.append(d)
        return d

    def attacker(self, action: str, spec: dict[str, Any]) -> Attacker:
        return Attacker(self, action, {"seconds": 5.0, **spec})


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode:
        raise BenchError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Daemon:
    """`zflood run` in `state`, on 127.0.0.1 (mDNS on 127.0.0.1 only if `mdns`)."""

    def __init__(self, world: World, state: Path, peers: list[str], mdns: bool) -> None:
        self.state = state
        self.log = state.parent / f"{state.name}.log"
        argv = [sys.executable, "-m", "zflood", "--state", str(state), "run",
                "--listen", "tcp://127.0.0.1:0",
                *(["--interface", "127.0.0.1"] if mdns else ["--no-discovery"])]
        for peer in peers:
            argv += ["--peer", peer]
        with open(self.log, "wb") as log:
            self.proc = world.spawn(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log)
        self.pid = self.proc.pid
        ends = wait_for(self._ends, START_TIMEOUT, f"the daemon in {state} to start")
        self.listen: str = ends["listen"]
        self.pub: str = ends["pub"][0]
        self.control: str = ends["control"][0]
        self.client = Client(self.control, self.pub, timeout=STATUS_TIMEOUT)
        self.node: str = self.client.status()["node"]

    def _ends(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise BenchError(f"the daemon in {self.state} exited: {tail(self.log)}")
        return endpoints_of(self.state, self.pid)

    def linked(self) -> set[str]:
        return {p["node"] for p in self.client.status()["peers"] if p["state"] == "connected"}

    def log_lines(self) -> int:
        with open(self.log, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def stop(self, timeout: float) -> float | None:
        self.client.close()
        return stop_proc(self.proc, timeout)


def tail(path: Path, n: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    return "(no log)"


class Attacker:
    """tools/hostile_peer.py ACTION as a process: the spec on stdin, JSON events on stdout."""

    def __init__(self, world: World, action: str, spec: dict[str, Any]) -> None:
        self.action = action
        self.seconds = float(spec["seconds"])
        self.log = world.dir / f"attacker-{action}.log"
        with open(self.log, "wb") as log:
            self.proc = world.spawn([sys.executable, str(PEER), action], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()
        self.events = hostile_peer.Events(self.proc.stdout)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            got = self.events.wait(event, timeout)
        except TimeoutError:
            raise BenchError(f"the {self.action} attacker sent no {event!r} within "
                             f"{timeout:g} s") from None
        if got is None:
            raise BenchError(f"the {self.action} attacker exited before {event!r}: "
                             f"{tail(self.log)}")
        return got

    def finish(self) -> dict[str, Any]:
        done = self.wait("done", self.seconds + 30)
        if stop_proc(self.proc, 10) is None:
            raise BenchError(f"the {self.action} attacker had to be killed")
        return done


# -- one measured attack -----------------------------------------------------------------------


class Attack(Protocol):
    def finish(self) -> dict[str, Any]: ...


@dataclass
class Row:
    attack: str
    window: float = 0.0
    cpu: float = 0.0
    rss: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    status: list[tuple[float, bool]] = field(default_factory=list)
    honest: tuple[int, int] = (0, 0)
    ratio: float | None = None
    log: int = 0
    recover: float | None = None
    stop: float | None = None
    fds: tuple[int, int] = (0, 0)
    extra: str = ""


def recovered(victim: Daemon, timeout: float) -> float | None:
    """Seconds until a status round trip takes <= PROMPT; None if none did within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = time.monotonic()
        with contextlib.suppress(DaemonUnavailable):
            victim.client.status()
            if time.monotonic() - s <= PROMPT:
                return s - t0
        time.sleep(POLL_GAP)
    return None


def measure(name: str, victim: Daemon, honest: Daemon, start: Callable[[], Attack],
            args: argparse.Namespace) -> tuple[Row, dict[str, Any]]:
    """Baseline, then `start()` (it returns once the attacker is in position) and the
    attack's `finish()` under the poller, the honest probe and the sampler; then recovery,
    and SIGTERM. The victim is stopped here; the rest by the World."""
    row = Row(name)
    probe = HonestProbe(honest, victim)
    sampler = Sampler(victim.pid)
    poller = StatusPoller(victim.control)
    try:
        pid = victim.pid
        row.rss, base_fds, log0 = rss_mib(pid), open_files(pid), victim.log_lines()
        hwm0 = rss_mib(pid, "VmHWM")
        sampler.start()
        attack = start()
        t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        poller.start()
        probe.start()
        outcome = attack.finish()
        t1 = time.monotonic()
        row.recover = recovered(victim, args.recover_timeout)
        t2 = time.monotonic()
        row.cpu = cpu_seconds(pid) - cpu0
        row.after = rss_mib(pid) - row.rss
        row.log = victim.log_lines() - log0
        hwm = rss_mib(pid, "VmHWM")  # the kernel's peak: catches a spike between samples
        time.sleep(min(HONEST_LIMIT, max(0.0, t1 + HONEST_LIMIT - time.monotonic())))
    finally:
        poller.stop()
        probe.stop()
        sampler.stop()
    peak, fds = sampler.peak(t0, t2)
    row.peak = max(peak, hwm if hwm > hwm0 else 0.0) - row.rss
    row.window = t1 - t0
    row.status = [(dt, ok) for t, dt, ok in poller.samples if t0 <= t <= t1]
    row.honest = probe.within(t0, t1)
    row.fds = (base_fds, fds)
    if outcome.get("bytes_out"):
        row.ratio = outcome.get("bytes_in", 0) / outcome["bytes_out"]
    row.stop = victim.stop(args.stop_timeout)
    return row, outcome


def pair(world: World, victim_notes: int = 0, body: int = 100, mdns: bool = False,
         ) -> tuple[Daemon, Daemon]:
    """The victim (holding `victim_notes` of its own) and an honest member linked to it."""
    victim = world.daemon(world.state("victim", victim_notes, body), mdns=mdns)
    peers = [] if mdns else [victim.listen]
    honest = world.daemon(world.state("honest"), *peers, mdns=mdns)
    wait_for(lambda: honest.node in victim.linked() and victim.node in honest.linked(),
             START_TIMEOUT, "the victim and the honest member to link")
    return victim, honest


def positioned(world: World, action: str, spec: dict[str, Any]) -> Callable[[], Attack]:
    def start() -> Attack:
        attacker = world.attacker(action, spec)
        attacker.wait("ready", START_TIMEOUT)
        return attacker
    return start


# -- the attacks -------------------------------------------------------------------------------


def attack_origins(args: argparse.Namespace) -> Row:
    """(1) A member with more origins than max_origins (fresh keys, one signed note each)
    pushes them all to the victim; then a fresh member links to the victim."""
    with World("origins") as w:
        victim, honest = pair(w)
        spec = {"code": w.group.join_code, "victim": victim.listen, "origins": args.origins,
                "seconds": args.origins_seconds}
        row, out = measure("origins", victim, honest, positioned(w, "origins", spec), args)
        # The victim is stopped; what it holds decides what a fresh member gets from it.
        victim = w.daemon(victim.state)
        held = victim.client.status()["notes"]
        fresh = w.daemon(w.state("fresh"), victim.listen)
        t0 = time.monotonic()
        with contextlib.suppress(BenchError):
            wait_for(lambda: fresh.client.status()["notes"] >= held, args.fresh_timeout,
                     "the fresh member")
        got = fresh.client.status()["notes"]
        row.extra = (f"{out['origins']:,} origins pushed; a fresh member got {got:,} of "
                     f"{held:,} notes in {time.monotonic() - t0:.1f} s")
        return row


def attack_want(args: argparse.Namespace) -> Row:
    """(2) WANT amplification: the same large range of the victim's own log, many times."""
    with World("want") as w:
        victim, honest = pair(w, args.want_notes, args.body)
        spec = {"code": w.group.join_code, "victim": victim.listen, "origin": victim.node,
                "start": 0, "end": args.want_notes, "wants": args.wants,
                "flood": args.want_flood, "stall": args.want_stall,
                "rcvhwm": 16 if args.want_stall else 0, "seconds": args.want_seconds}
        row, out = measure("want", victim, honest, positioned(w, "want", spec), args)
        row.extra = (f"{out['wants']:,} WANTs of {args.want_notes:,} notes "
                     f"({args.want_notes * args.body / 1e6:.1f} MB) in {out['bytes_out']:,} B,"
                     f" {args.want_stall:g} s unread; got {out['bytes_in'] / 1e6:,.1f} MB back")
        return row


def attack_backlog(args: argparse.Namespace) -> Row:
    """(2) Bytes queued to one peer: the victim's whole log asked for in distinct ranges,
    again every second, by a member that reads nothing for a while."""
    with World("backlog") as w:
        victim, honest = pair(w, args.backlog_notes, args.body)
        spec = {"code": w.group.join_code, "victim": victim.listen, "origin": victim.node,
                "end": args.backlog_notes, "step": DEFAULT.batch_notes, "reask": 1.0,
                "stall": args.backlog_stall, "rcvhwm": 16, "seconds": args.backlog_seconds}
        row, out = measure("backlog", victim, honest, positioned(w, "backlog", spec), args)
        size = args.backlog_notes * args.body / 1e6
        row.extra = (f"{out['wants']:,} WANTs in {out['rounds']} rounds for {size:.0f} MB of "
                     f"notes, {args.backlog_stall:g} s unread; got {out['bytes_in'] / 1e6:,.1f}"
                     " MB back")
        return row


def attack_minted(args: argparse.Namespace) -> Row:
    """Node ids minted by one code holder, each with a CURVE key of its own, all saying HI
    from one address: each would cost the victim a DEALER, a connection and a link."""
    with World("minted") as w:
        victim, honest = pair(w)
        spec = {"code": w.group.join_code, "victim": victim.listen, "ids": args.minted_ids,
                "seconds": args.minted_seconds}
        row, out = measure("minted", victim, honest, positioned(w, "minted", spec), args)
        row.ratio = None
        row.extra = (f"{out['ids']:,} node ids minted at one address; the victim dialled back "
                     f"{out['answered']:,}")
        return row


def attack_heads(args: argparse.Namespace) -> Row:
    """(3) HEADS claiming many fake origins, never served."""
    with World("heads") as w:
        victim, honest = pair(w)
        spec = {"code": w.group.join_code, "victim": victim.listen, "origins": args.fake_origins,
                "per_frame": args.heads_per_frame, "seconds": args.heads_seconds}
        row, out = measure("heads", victim, honest, positioned(w, "heads", spec), args)
        row.extra = (f"{out['claimed']:,} fake origins claimed in {out['frames_out']:,} HEADS;"
                     f" {out['frames_in']:,} frames back")
        return row


def attack_hi(args: argparse.Namespace) -> Row:
    """(4) A HI flood: bogus HIs from a code holder, garbage from a stranger."""
    with World("hi") as w:
        victim, honest = pair(w)
        spec = {"code": w.group.join_code, "victim": victim.listen,
                "kinds": args.hi_kinds.split(","), "seconds": args.hi_seconds}
        row, out = measure("hi", victim, honest, positioned(w, "hi", spec), args)
        row.ratio = None  # what comes back answers HIs, not engine frames
        sent = ", ".join(f"{v:,} {k[3:].replace('_', '-')}" for k, v in out.items()
                         if k.startswith("hi_") and k != "hi_dropped")
        row.extra = (f"HIs sent: {sent} ({out['hi_dropped']:,} dropped at our HWM); "
                     f"{out.get('connections', 0):,} stranger connections")
        return row


class _Mdns:
    """The mdns attack's window: the records go up, a fresh member starts and is timed until
    the victim links it, then the records stay until the attacker's time is up."""

    def __init__(self, w: World, victim: Daemon, spec: dict[str, Any], timeout: float) -> None:
        self.w, self.victim, self.timeout = w, victim, timeout
        self.attacker = w.attacker("mdns", spec)
        self.attacker.wait("ready", START_TIMEOUT)
        self.linked: float | None = None
        self.registered: dict[str, Any] = {}

    def finish(self) -> dict[str, Any]:
        self.registered = self.attacker.wait("registered", self.attacker.seconds + 30)
        fresh = self.w.daemon(self.w.state("fresh"), mdns=True)
        t0 = time.monotonic()
        with contextlib.suppress(BenchError):
            wait_for(lambda: fresh.node in self.victim.linked(), self.timeout,
                     "the fresh member to link")
            self.linked = time.monotonic() - t0
        return self.attacker.finish()


def attack_mdns(args: argparse.Namespace) -> Row:
    """(5) Fake DNS-SD records carrying the group's public id, in a network namespace."""
    with World("mdns", netns=True) as w:
        victim, honest = pair(w, mdns=True)
        spec = {"group": w.group.id.hex(), "records": args.records, "rate": args.records_rate,
                "seconds": args.mdns_seconds}
        box: list[_Mdns] = []

        def start() -> Attack:
            box.append(_Mdns(w, victim, spec, args.fresh_timeout))
            return box[0]

        row, out = measure("mdns", victim, honest, start, args)
        linked = box[0].linked
        row.extra = (f"{out['records']:,} fake records (up in {box[0].registered['seconds']} s);"
                     " a fresh member linked "
                     + (f"in {linked:.1f} s" if linked is not None
                        else f"not within {args.fresh_timeout:g} s"))
        return row


def attack_reads(args: argparse.Namespace) -> Row:
    """(6) A local control client that sends reads and never reads the replies."""
    with World("reads") as w:
        victim, honest = pair(w, args.read_notes, args.body)
        spec = {"control": victim.control, "reads": args.reads, "limit": 1000,
                "seconds": args.reads_seconds}
        row, out = measure("reads", victim, honest, positioned(w, "reads", spec), args)
        row.extra = (f"{out['reads']:,} reads of up to 1,000 notes "
                     f"({args.body} B) queued, none read")
        return row


class _Bulk:
    def __init__(self, w: World, victim: Daemon, source: Path, n: int, timeout: float) -> None:
        self.victim, self.n, self.timeout = victim, n, timeout
        self.t0 = time.monotonic()
        self.source = w.daemon(source, victim.listen)

    def finish(self) -> dict[str, Any]:
        origin = self.source.node
        with Client(self.victim.control, timeout=STATUS_TIMEOUT) as client:
            def done() -> bool:
                with contextlib.suppress(DaemonUnavailable):
                    return int(client.status()["heads"].get(origin, 0)) >= self.n
                return False
            wait_for(done, self.timeout, f"the victim to hold {self.n:,} notes")
        return {"seconds": time.monotonic() - self.t0}


def attack_bulk(args: argparse.Namespace) -> Row:
    """(7) A bulk sync: an honest member holding N notes links to the victim."""
    with World("bulk") as w:
        victim, honest = pair(w)
        source = w.state("source", args.bulk_notes, args.bulk_body)
        box: list[_Bulk] = []

        def start() -> Attack:
            box.append(_Bulk(w, victim, source, args.bulk_notes, args.bulk_timeout))
            return box[0]

        row, out = measure("bulk", victim, honest, start, args)
        row.extra = (f"{args.bulk_notes:,} notes ({args.bulk_body} B) in {out['seconds']:.1f} s: "
                     f"{args.bulk_notes / out['seconds']:,.0f} notes/s")
        return row


ATTACKS: dict[str, Callable[[argparse.Namespace], Row]] = {
    "origins": attack_origins, "want": attack_want, "backlog": attack_backlog,
    "heads": attack_heads, "hi": attack_hi, "minted": attack_minted,
    "mdns": attack_mdns, "reads": attack_reads, "bulk": attack_bulk}


# -- output ------------------------------------------------------------------------------------


HEADER = (f"{'attack':<8} {'window':>6} {'cpu_s':>6} {'rss':>5} {'+peak':>6} {'+after':>6} "
          f"{'p50':>7} {'p99':>7} {'max':>7} {'fail/n':>7} {'honest':>7} {'out/in':>8} "
          f"{'log':>7} {'recover_s':>9} {'stop_s':>6} {'fds':>9}  notes")


def fmt(row: Row) -> str:
    lat = sorted(dt * 1000 for dt, _ in row.status)
    fails = sum(1 for _, ok in row.status if not ok)
    if len(lat) >= 2:
        q = statistics.quantiles(lat, n=100, method="inclusive")
        p50, p99, top = f"{q[49]:.1f}", f"{q[98]:.1f}", f"{lat[-1]:.0f}"
    else:
        p50 = p99 = top = f"{lat[0]:.0f}" if lat else "-"
    ratio = "-" if row.ratio is None else f"{row.ratio:,.0f}" if row.ratio >= 10 else \
        f"{row.ratio:.2f}"
    recover = "never" if row.recover is None else f"{row.recover:.1f}"
    stop = "kill" if row.stop is None else f"{row.stop:.1f}"
    return (f"{row.attack:<8} {row.window:>6.1f} {row.cpu:>6.1f} {row.rss:>5.0f} "
            f"{row.peak:>+6.0f} {row.after:>+6.0f} {p50:>7} {p99:>7} {top:>7} "
            f"{f'{fails}/{len(lat)}':>7} "
            f"{row.honest[0]:>3}/{row.honest[1]:<3} {ratio:>8} {row.log:>7,} {recover:>9} "
            f"{stop:>6} {row.fds[0]:>4}>{row.fds[1]:<4}  {row.extra}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--attack", action="append", choices=list(ATTACKS),
                   help="run only this attack (repeatable); default: all, in this order")
    p.add_argument("--body", type=int, default=1000, help="note body bytes where the victim "
                   "holds notes up front (want, backlog, reads)")
    p.add_argument("--stop-timeout", type=float, default=5.0, help="SIGTERM, then SIGKILL")
    p.add_argument("--recover-timeout", type=float, default=10.0,
                   help="how long to wait for the victim to answer promptly again")
    p.add_argument("--fresh-timeout", type=float, default=10.0,
                   help="how long a fresh member gets to link (mdns) or sync (origins)")
    p.add_argument("--origins", type=int, default=MAX_ORIGINS + 104,
                   help="origins: fresh origins pushed (default: Config.max_origins + 104)")
    p.add_argument("--origins-seconds", type=float, default=10.0)
    p.add_argument("--want-notes", type=int, default=DEFAULT.batch_notes * DEFAULT.window_batches,
                   help="want: the victim's own notes, and the range every WANT asks for "
                   "(default: the most one WANT is served)")
    p.add_argument("--wants", type=int, default=200, help="want: WANT frames sent")
    p.add_argument("--want-flood", type=float, default=0.0, metavar="S",
                   help="want: send WANTs at full speed for S seconds (issue 8: 3)")
    p.add_argument("--want-stall", type=float, default=2.0, metavar="S",
                   help="want: after sending, read nothing for S seconds, then read all")
    p.add_argument("--want-seconds", type=float, default=5.0)
    p.add_argument("--backlog-notes", type=int, default=60_000,
                   help="backlog: the victim's own notes, all asked for, again and again")
    p.add_argument("--backlog-stall", type=float, default=8.0, metavar="S",
                   help="backlog: read nothing for S seconds, then read all")
    p.add_argument("--backlog-seconds", type=float, default=12.0)
    p.add_argument("--fake-origins", type=int, default=200_000, help="heads: origins claimed")
    p.add_argument("--heads-per-frame", type=int, default=min(4000, HEADS_PAGE),
                   help="heads: origins per HEADS frame (at most Config.heads_page)")
    p.add_argument("--heads-seconds", type=float, default=8.0)
    p.add_argument("--hi-kinds", default="wrong-key,nonce,stranger",
                   help="hi: comma-separated, of wrong-key, nonce, stranger")
    p.add_argument("--hi-seconds", type=float, default=5.0)
    p.add_argument("--minted-ids", type=int, default=300, help="minted: node ids minted")
    p.add_argument("--minted-seconds", type=float, default=6.0)
    p.add_argument("--records", type=int, default=1100, help="mdns: fake records announced")
    p.add_argument("--records-rate", type=float, default=500.0,
                   help="mdns: records announced per second")
    p.add_argument("--mdns-seconds", type=float, default=8.0)
    p.add_argument("--read-notes", type=int, default=20_000, help="reads: notes the victim holds")
    p.add_argument("--reads", type=int, default=300, help="reads: requests never read")
    p.add_argument("--reads-seconds", type=float, default=5.0)
    p.add_argument("--bulk-notes", type=int, default=300_000,
                   help="bulk: notes the source holds (1000000 for the issue's size)")
    p.add_argument("--bulk-body", type=int, default=100, help="bulk: body bytes (as in "
                   "tools/bench_daemon.py)")
    p.add_argument("--bulk-timeout", type=float, default=300.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = args.attack or list(ATTACKS)
    if "mdns" in names and os.geteuid() != 0:
        print("bench_hostile: the mdns attack needs root (a network namespace): skipped",
              file=sys.stderr)
        names.remove("mdns")
    elif "mdns" in names:
        sweep_namespaces()
    print(f"zflood hostile-peer benchmark: {', '.join(names)} (zflood from "
          f"{Path(zflood.__file__).parent})", flush=True)
    print(HEADER, flush=True)
    failed = 0
    for name in names:
        try:
            print(fmt(ATTACKS[name](args)), flush=True)
        except (BenchError, OSError) as e:  # OSError: the victim's /proc entry went away
            failed += 1
            print(f"{name:<8} could not be measured: {e}", flush=True)
    return 1 if failed else 0


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every World: its processes are stopped


def sweep_namespaces() -> None:
    """Remove namespaces a killed earlier run of this benchmark left (their pid is gone)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10, check=False).stdout.split()
    for name in listed:
        m = re.fullmatch(r"zfh-(\d+)-[0-9a-f]{4}", name)
        if m is None or Path(f"/proc/{m[1]}").exists():
            continue
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=10, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(BenchError):
            _ip("netns", "del", name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stopped)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
