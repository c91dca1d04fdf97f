"""The hostile side of tools/bench_hostile.py: one attack of issue 8, run as its own process.

    python tools/hostile_peer.py ACTION < spec.json

The spec (a JSON object on stdin) says whom to attack and how hard; the process prints JSON
lines on stdout: {"event": "ready"} once it is in position (linked, where it links: the
measured window starts there), then {"event": "done", ...} with what it sent and received.
It stops on its own once its `seconds` are up; its parent stops it by pid if it does not.

The member attacks (origins, want, backlog, heads, hi, minted) hold the join code, as a
stolen laptop would: `RawMember` speaks the mesh's framing (HI / DATA) over real CurveZMQ
sockets, with its own node key, and the engine's messages built with zflood.wire and signed
with zflood.identity, so it follows the protocol's public formats as they evolve. It does
none of the engine's book-keeping: it sends what the attack needs and counts what comes back.

Actions:
  origins  link, then push one validly signed note from each of N fresh origins
  want     link, then ask N times (or for S seconds) for the same large range of the
           victim's own log; optionally read nothing for a while (a peer that stalls)
  backlog  link, then ask for the victim's whole log in distinct ranges, again and again,
           reading nothing for a while (bytes queued to one peer)
  heads    link, then claim N fake origins in HEADS frames (never serve them)
  minted   N node ids minted by one code holder, each with its own key, all saying HI
  hi       bogus HIs from a code holder (naming others; a new nonce each time) and garbage
           from a stranger on raw TCP connections
  reads    a local control client: N reads queued, no reply ever read
  mdns     N fake DNS-SD records of the group's public id (real Zeroconf on 127.0.0.1)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import cbor2
import zmq
from zmq.utils import z85

from zflood import wire
from zflood.identity import GENESIS, Group, SigningKey, note_id, x25519_public
from zflood.mesh import DATA, HEARING, HI, hi_payload

Spec = dict[str, Any]
HI_EVERY = 0.5  # keepalive: well inside the victim's peer_timeout


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Events:
    """For the parent: what a running `hostile_peer.py` prints on `out` (its stdout), read by
    a thread of its own, waited for one event at a time."""

    def __init__(self, out: IO[bytes]) -> None:
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(out,), daemon=True)
        self._thread.start()

    def _read(self, out: IO[bytes]) -> None:
        for line in out:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def wait(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The next line of `event`; None if the process ended before it. TimeoutError if
        none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(event) from None
            if got is None:
                self._lines.put(None)  # still ended for the next wait
                return None
            if got.get("event") == event:
                return got

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class RawMember:
    """A code holder with a fresh node key: a ROUTER (CURVE server, the group's key) for what
    the victim sends, a DEALER (CURVE client, our own key) into the victim's ROUTER."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], group: Group, victim: str,
                 rcvhwm: int = 0) -> None:
        self.key = SigningKey()
        self.node = self.key.public
        self.group = group
        self.router = ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.curve_server = True
        self.router.curve_secretkey = z85.encode(group.curve_server_secret)
        # 0: take everything the victim sends as fast as it comes (we count it); a small one
        # leaves what we do not read queued in the victim
        self.router.rcvhwm = rcvhwm
        if rcvhwm:
            self.router.rcvbuf = 64 * 1024
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.routing_id = self.node
        self.dealer.sndhwm = 100_000
        self.dealer.sndtimeo = 1000  # a victim that stopped reading must not hang us
        secret = self.key.curve_secret()
        self.dealer.curve_secretkey = z85.encode(secret)
        self.dealer.curve_publickey = z85.encode(x25519_public(secret))
        self.dealer.curve_serverkey = z85.encode(group.curve_server_public)
        self.dealer.connect(victim)
        self.nonce = os.urandom(16)
        self.hi_at = 0.0
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = self.dropped = 0
        self.messages_in = 0  # anything the victim sent (its HIs too): it dialled us back
        self.hello: wire.Hello | None = None

    def hi(self, node: bytes | None = None, nonce: bytes | None = None,
           hears: int = HEARING) -> bool:
        payload = hi_payload(node or self.node, self.port, nonce or self.nonce, hears)
        try:
            self.dealer.send_multipart([HI, payload], zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def send(self, msg: wire.Message | bytes) -> bool:
        frame = msg if isinstance(msg, bytes) else wire.encode(msg)
        try:
            self.dealer.send_multipart([DATA, frame])
        except zmq.Again:
            self.dropped += 1
            return False
        self.frames_out += 1
        self.bytes_out += len(frame)
        return True

    def pump(self, seconds: float, on_data: Callable[[bytes], None] | None = None) -> None:
        """Read whatever the victim sends for `seconds` (0: what is there now), counting DATA,
        and keep our HI going."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= self.hi_at:
                self.hi_at = now + HI_EVERY
                self.hi()
            left = min(end, self.hi_at) - now
            if self.router.poll(max(0, int(left * 1000)) if left > 0 else 0):
                for _ in range(10_000):
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.messages_in += 1
                    if len(frames) == 3 and frames[1] == DATA:
                        self.frames_in += 1
                        self.bytes_in += len(frames[2])
                        if on_data is not None:
                            on_data(frames[2])
            elif time.monotonic() >= end:
                return
            if seconds == 0:
                return

    def stall(self, seconds: float) -> None:
        """Read nothing for `seconds`, but keep our HI going: a peer that stopped reading."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.hi()
            time.sleep(min(HI_EVERY, left))
        self.hi_at = time.monotonic() + HI_EVERY

    def link(self, timeout: float = 10.0) -> wire.Hello:
        """HI until the victim dials back and its engine says HELLO; then our own HELLO."""
        got: list[wire.Hello] = []

        def take(frame: bytes) -> None:
            with contextlib.suppress(Exception):
                msg = wire.decode(frame)
                if isinstance(msg, wire.Hello):
                    got.append(msg)

        deadline = time.monotonic() + timeout
        while not got:
            if time.monotonic() > deadline:
                raise SystemExit("hostile peer: the victim never linked")
            self.pump(0.05, take)
        self.hello = got[0]
        self.send(hello_frame(self.group.id, self.node))
        self.frames_out = self.bytes_out = self.frames_in = self.bytes_in = 0
        return self.hello

    def counts(self) -> dict[str, int]:
        return {"frames_out": self.frames_out, "bytes_out": self.bytes_out,
                "frames_in": self.frames_in, "bytes_in": self.bytes_in, "dropped": self.dropped}


def hello_frame(group: bytes, node: bytes) -> bytes:
    """Our HELLO: we hold nothing, are linked to nobody, and have seen the victim's."""
    return wire.encode(wire.Hello(version=wire.VERSION, group=group, node=node, heads={},
                                  tips={}, links=(), seen=True))


def fake_heads(rng: random.Random, n: int) -> bytes:
    """HEADS claiming `n` origins nobody has, each with up to 999 notes."""
    return wire.encode(wire.Heads({rng.randbytes(32): rng.randrange(1, 1000) for _ in range(n)}))


def signed_origin(body: str) -> bytes:
    """One NOTES frame: the first note of a fresh origin, validly signed."""
    key = SigningKey()
    nid = note_id(key.public, 0, GENESIS, body)
    return wire.encode(wire.Notes(key.public, 0, GENESIS, (body,), key.sign(nid)))


def member_attack(spec: Spec, body: Callable[[RawMember, float], dict[str, Any]]) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        m = RawMember(ctx, Group.from_join_code(spec["code"]), spec["victim"],
                      spec.get("rcvhwm", 0))
        try:
            m.link()
            emit(event="ready", node=m.node.hex())
            end = time.monotonic() + spec["seconds"]
            extra = body(m, end)
            m.pump(max(0.0, end - time.monotonic()))
            emit(event="done", **m.counts(), **extra)
        finally:
            m.router.close(linger=0)
            m.dealer.close(linger=0)
    finally:
        ctx.term()


def origins(spec: Spec) -> None:
    frames = [signed_origin(f"origin {i}") for i in range(spec["origins"])]

    def body(m: RawMember, end: float) -> dict[str, Any]:
        for i, frame in enumerate(frames):
            m.send(frame)
            if i % 100 == 99:
                m.pump(0)
        return {"origins": len(frames)}

    member_attack(spec, body)


def want(spec: Spec) -> None:
    origin = bytes.fromhex(spec["origin"])
    frame = wire.encode(wire.Want(origin, spec["start"], spec["end"]))

    def body(m: RawMember, end: float) -> dict[str, Any]:
        stall = spec.get("stall", 0.0)
        flood_end = time.monotonic() + spec.get("flood", 0.0)
        sent = 0
        while sent < spec["wants"] or time.monotonic() < flood_end:
            sent += m.send(frame)
            if not stall and sent % 10 == 0:
                m.pump(0)
        m.stall(stall)
        return {"wants": sent}

    member_attack(spec, body)


def backlog(spec: Spec) -> None:
    """Ask for the victim's whole log in distinct ranges of `step` notes, again every `reask`
    seconds (a WANT asked again after the victim's request_timeout is served again), while
    reading nothing for `stall` seconds; then read what comes."""
    origin, step, end = bytes.fromhex(spec["origin"]), spec["step"], spec["end"]
    frames = [wire.encode(wire.Want(origin, s, min(s + step, end))) for s in range(0, end, step)]

    def body(m: RawMember, _end: float) -> dict[str, Any]:
        rounds = 0
        stall_end = time.monotonic() + spec["stall"]
        while (left := stall_end - time.monotonic()) > 0:
            for frame in frames:
                m.send(frame)
            rounds += 1
            m.stall(min(spec["reask"], left))
        return {"wants": rounds * len(frames), "rounds": rounds}

    member_attack(spec, body)


def heads(spec: Spec) -> None:
    rng = random.Random(spec.get("seed", 8))
    per_frame = spec["per_frame"]

    def body(m: RawMember, end: float) -> dict[str, Any]:
        claimed = 0
        while claimed < spec["origins"] and time.monotonic() < end:
            n = min(per_frame, spec["origins"] - claimed)
            m.send(fake_heads(rng, n))
            claimed += n
            m.pump(0)
        return {"claimed": claimed}

    member_attack(spec, body)


def _stranger(port: int, stop: threading.Event, out: dict[str, int]) -> None:
    """Raw TCP garbage: random bytes, half greetings, NULL and CURVE greetings that go
    nowhere; a fresh connection each time."""
    def greeting(mech: bytes) -> bytes:
        return b"\xff" + bytes(8) + b"\x7f\x03\x00" + mech.ljust(20, b"\x00") + bytes(32)

    makes = [lambda: os.urandom(64), lambda: greeting(b"CURVE")[:30],
             lambda: greeting(b"NULL") + b"\x04\x1c\x05READY" + os.urandom(32),
             lambda: greeting(b"CURVE") + b"\x04\xc8\x05HELLO" + os.urandom(194),
             lambda: b"\xff" + struct.pack("!Q", 2**63) + b"\x7f"]
    i = 0
    while not stop.is_set():
        with contextlib.suppress(OSError), \
                socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(makes[i % len(makes)]())
            out["connections"] += 1
        i += 1


def hi(spec: Spec) -> None:
    kinds = spec["kinds"]
    port = int(spec["victim"].rpartition(":")[2])

    def body(m: RawMember, end: float) -> dict[str, Any]:
        stop = threading.Event()
        stranger = {"connections": 0}
        thread = None
        if "stranger" in kinds:
            thread = threading.Thread(target=_stranger, args=(port, stop, stranger))
            thread.start()
        sent = {k: 0 for k in kinds if k != "stranger"}
        dropped = 0
        try:
            while sent and time.monotonic() < end:
                for kind in sent:
                    if kind == "wrong-key":  # names a node whose key is not ours
                        ok = m.hi(node=os.urandom(32))
                    else:  # "nonce": ourselves, restarted again and again
                        ok = m.hi(nonce=os.urandom(16))
                    sent[kind] += ok
                    dropped += not ok
                if sum(sent.values()) % 1000 < len(sent):
                    m.pump(0)
            if not sent:
                m.pump(max(0.0, end - time.monotonic()))
        finally:
            stop.set()
            if thread is not None:
                thread.join(5)
        return {"hi_" + k.replace("-", "_"): n for k, n in sent.items()} | {
            "hi_dropped": dropped, **stranger}

    member_attack(spec, body)


def minted(spec: Spec) -> None:
    """N node ids minted by one code holder, each a RawMember of its own (a key, a ROUTER the
    victim may dial back, a DEALER into the victim), all saying HI for `seconds`."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.max_sockets = 2 * spec["ids"] + 64
    group = Group.from_join_code(spec["code"])
    members: list[RawMember] = []
    try:
        members = [RawMember(ctx, group, spec["victim"]) for _ in range(spec["ids"])]
        emit(event="ready")
        end = time.monotonic() + spec["seconds"]
        dialled_back = set()
        while time.monotonic() < end:
            for i, m in enumerate(members):
                m.pump(0)  # its HI, and whatever the victim sends back
                if m.messages_in:
                    dialled_back.add(i)
            time.sleep(HI_EVERY / 2)
        emit(event="done", ids=len(members), answered=len(dialled_back))
    finally:
        for m in members:
            m.router.close(linger=0)
            m.dealer.close(linger=0)
        ctx.term()


def reads(spec: Spec) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvhwm = 1  # replies stay queued in the daemon, not here
    dealer.rcvbuf = 4096
    dealer.sndhwm = 0
    try:
        dealer.connect(spec["control"])
        emit(event="ready")
        for i in range(spec["reads"]):
            dealer.send(cbor2.dumps({"op": "read", "start": 0, "limit": spec["limit"], "id": i}))
        time.sleep(spec["seconds"])  # holding the socket, reading nothing
        emit(event="done", reads=spec["reads"])
    finally:
        dealer.close(linger=0)
        ctx.term()


def mdns(spec: Spec) -> None:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    async def main() -> None:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"])
        try:
            start = time.monotonic()
            announcing: list[asyncio.Future[Any]] = []
            for i in range(spec["records"]):
                node = os.urandom(32)
                label = f"zflood-fake-{i}-{node.hex()[:8]}"
                info = AsyncServiceInfo(
                    "_zflood._tcp.local.", f"{label}._zflood._tcp.local.",
                    port=random.randrange(20_000, 60_000),
                    properties={b"v": b"1", b"g": spec["group"].encode(), b"n": node.hex()},
                    server=f"{label}.local.", parsed_addresses=["127.0.0.1"])
                announcing.append(asyncio.ensure_future(await zc.async_register_service(
                    info, cooperating_responders=True)))
                if i == 0:
                    emit(event="ready")
                # paced, or most announcements are lost to full socket buffers before the
                # victim reads them: each record must reach it to cost it a dial
                await asyncio.sleep(max(0.0, start + (i + 1) / spec["rate"] - time.monotonic()))
            registered = time.monotonic() - start
            emit(event="registered", seconds=round(registered, 2))
            left = spec["seconds"] - registered
            if left > 0:
                await asyncio.sleep(left)
            for a in announcing:
                a.cancel()
            await asyncio.gather(*announcing, return_exceptions=True)
            emit(event="done", records=spec["records"])
        finally:
            await zc.async_close()

    asyncio.run(main())


ACTIONS: dict[str, Callable[[Spec], None]] = {
    "origins": origins, "want": want, "backlog": backlog, "heads": heads, "hi": hi,
    "minted": minted, "reads": reads, "mdns": mdns}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ACTIONS:
        raise SystemExit(f"usage: hostile_peer.py {{{','.join(ACTIONS)}}} < spec.json")
    ACTIONS[sys.argv[1]](json.loads(sys.stdin.read()))


if __name__ == "__main__":
    main()
