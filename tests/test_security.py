"""Only holders of the join code can link, read or inject: real `zflood run` processes on
127.0.0.1 (static peers, no mDNS), attacked by other daemons, raw ZeroMQ and raw TCP clients,
and by an in-process member that breaks the protocol.

Every daemon is stopped by PID in a fixture; every wait is bounded. Where there is no event to
await (another process's state) we poll the daemon's control socket at 10 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq
import zmq.asyncio
from daemons import WAIT, Daemons, Held, daemons_fixture, member, tmp_fixture, wait_for
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from zflood import wire
from zflood.identity import GENESIS, Group, SigningKey, ed25519_to_x25519_public
from zflood.mesh import BYE, DATA, HI, Link, Mesh, hi_payload
from zflood.node import Node

tmp = tmp_fixture("zs")
start = daemons_fixture()


class Group2:
    """Members A and B of one group, B given A as a static peer, linked both ways."""

    def __init__(self, tmp: Path, start: Daemons) -> None:
        self.tmp = tmp
        self.code = member(tmp / "a")
        member(tmp / "b", self.code)
        self.group = Group.from_join_code(self.code)
        self.a = start(tmp / "a")
        self.b = start(tmp / "b", self.a.listen)
        wait_for(lambda: self.a.linked() == {self.b.node} and self.b.linked() == {self.a.node},
                 WAIT, "A and B to link")
        self.serial = 0

    def still_syncing(self) -> None:
        """A and B are up, linked, and a note published on either reaches the other."""
        assert self.a.alive() and self.b.alive()
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            self.serial += 1
            body = f"check {self.serial} from {src.node[:8]}"
            src.client.publish(body)
            wait_for(functools.partial(dst.has, body), WAIT, f"{body!r} to reach the other member")
        assert self.a.linked() == {self.b.node} and self.b.linked() == {self.a.node}

    def held_only_members_notes(self, before: Held) -> None:
        """A and B hold what they held `before` plus the checks, and nothing of any origin
        but A's and B's."""
        for d in (self.a, self.b):
            now = d.held()
            assert before <= now
            assert {o for o, _, _ in now} <= {self.a.node, self.b.node}, now - before
            extra = {b for _, _, b in now - before}
            assert all(str(b).startswith("check ") for b in extra), extra


@pytest.fixture
def ab(tmp: Path, start: Daemons) -> Group2:
    return Group2(tmp, start)


def signed_batch(group: Group, bodies: list[str]) -> tuple[bytes, bytes, bytes]:
    """(origin, HELLO frame, NOTES frame) of a fresh origin whose notes are validly signed:
    what an outsider would most like to plant (the engine accepts any origin's signed log)."""
    node = Node(group=group.id)
    for body in bodies:
        node.publish(body)
    batch = next(node.export())
    hello = wire.encode(wire.Hello(wire.VERSION, group.id, node.id, {}, {}))
    node.close()
    return node.id, hello, wire.encode(batch)


# -- a daemon of another group -----------------------------------------------------------------


def test_linked_members_exchange_notes_both_ways(ab: Group2) -> None:
    ab.still_syncing()
    assert ab.a.held() == ab.b.held()
    assert ab.a.group == ab.b.group == ab.group.id.hex()


def test_a_daemon_of_another_group_dialling_both_gets_nothing_and_plants_nothing(
    ab: Group2, start: Daemons
) -> None:
    member(ab.tmp / "c")  # another group: another code
    c = start(ab.tmp / "c", ab.a.listen, ab.b.listen)
    assert c.group != ab.a.group
    c.client.publish("C before")
    c_notes = c.held()
    sent: list[str] = []
    deadline = time.monotonic() + 2.0  # C keeps dialling A and B all this while
    while time.monotonic() < deadline:
        body = f"A {len(sent)}"
        ab.a.client.publish(body)
        sent.append(body)
        c.client.publish(f"C {len(sent)}")
        assert not c.linked()
        assert ab.a.linked() == {ab.b.node} and ab.b.linked() == {ab.a.node}
        time.sleep(0.2)
    # C really tried: its static peers are still being dialled, never linked
    c_peers = c.client.status()["peers"]
    assert {p["address"] for p in c_peers} == {ab.a.listen, ab.b.listen}, c_peers
    assert all(p["state"] != "connected" for p in c_peers), c_peers
    # B got every note of A meanwhile; C got none of A's or B's, and planted none of its own
    wait_for(lambda: {b for _, _, b in ab.b.held()} >= set(sent), WAIT, "A's notes on B")
    assert {o for o, _, _ in c.held()} == {c.node}
    assert len(c.held()) == len(c_notes) + len(sent)
    for d in (ab.a, ab.b):
        assert c.node not in {o for o, _, _ in d.held()}
        assert c.node not in d.client.status()["heads"]
        assert c.node not in {p["node"] for p in d.client.status()["peers"]}
    ab.still_syncing()


# -- raw ZeroMQ clients ------------------------------------------------------------------------


def attack(endpoint: str, frames: list[list[bytes]], *, curve: tuple[bytes, bytes, bytes]
           | None = None, identity: bytes | None = None,
           until: tuple[str, ...] = ("HANDSHAKE_FAILED_NO_DETAIL", "HANDSHAKE_FAILED_PROTOCOL",
                                     "HANDSHAKE_FAILED_AUTH", "HANDSHAKE_SUCCEEDED"),
           listen: float = 0.3) -> tuple[list[str], list[list[bytes]]]:
    """A pyzmq DEALER connects to `endpoint` (CURVE if `curve` = (server key, public, secret),
    else NULL), queues `frames`, and watches its monitor until one of the `until` events (or
    WAIT). Returns (the monitor's events, whatever came back within `listen` seconds)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if identity is not None:
        sock.routing_id = identity
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    monitor = sock.get_monitor_socket()
    events: list[str] = []
    got: list[list[bytes]] = []
    try:
        sock.connect(endpoint)
        for message in frames:
            sock.send_multipart(message, zmq.NOBLOCK)  # queued until a handshake succeeds
        deadline = time.monotonic() + WAIT
        while not set(events) & set(until) and time.monotonic() < deadline:
            if monitor.poll(50):
                events.append(_event(monitor))
        end = time.monotonic() + listen
        while (left := end - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1):
                got.append(sock.recv_multipart())
        while monitor.poll(0):
            events.append(_event(monitor))
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    return events, got


def _event(monitor: zmq.Socket[bytes]) -> str:
    return str(zmq.Event(recv_monitor_message(monitor)["event"]).name)


def _hi(node: bytes, port: int, hears: bool = True) -> bytes:
    return hi_payload(node, port, os.urandom(16), int(hears))


def _messages(group: Group, claim: bytes, port: int) -> tuple[bytes, list[list[bytes]]]:
    """Frames shaped like the mesh's: HI claiming node `claim`, then DATA frames carrying a
    HELLO and a validly signed NOTES batch of a fresh origin, then BYE."""
    origin, hello, notes = signed_batch(group, ["planted 1", "planted 2"])
    return origin, [[HI, _hi(claim, port)], [DATA, hello], [DATA, notes], [HI, _hi(claim, port)],
                    [DATA, notes], [BYE]]


def test_plain_zeromq_without_curve_gets_nothing_back_and_plants_nothing(ab: Group2) -> None:
    before = ab.a.held()
    origin, frames = _messages(ab.group, bytes.fromhex(ab.b.node), 1)
    events, got = attack(ab.a.listen, frames)
    assert any(e.startswith("HANDSHAKE_FAILED") for e in events), events
    assert "HANDSHAKE_SUCCEEDED" not in events, events
    assert got == [], got
    assert ab.a.held() == before
    assert origin.hex() not in ab.a.client.status()["heads"]
    ab.still_syncing()
    assert origin.hex() not in {o for o, _, _ in ab.a.held() | ab.b.held()}


def test_a_curve_client_guessing_the_server_key_fails_the_handshake(ab: Group2) -> None:
    before = ab.a.held()
    origin, frames = _messages(ab.group, bytes.fromhex(ab.b.node), 1)
    public, secret = zmq.curve_keypair()
    a_node_curve = ed25519_to_x25519_public(bytes.fromhex(ab.a.node))  # public knowledge
    guesses = {
        "random": zmq.curve_keypair()[0],
        "A's own node key": z85.encode(a_node_curve),
        "the group id, padded": z85.encode(ab.group.id * 2),
    }
    for what, server_key in guesses.items():
        events, got = attack(ab.a.listen, frames, curve=(server_key, public, secret))
        assert any(e.startswith("HANDSHAKE_FAILED") for e in events), (what, events)
        assert "HANDSHAKE_SUCCEEDED" not in events, (what, events)
        assert got == [], (what, got)
    # the control: the same client with the key only the code gives does get through
    real = z85.encode(ab.group.curve_server_public)
    events, _ = attack(ab.a.listen, [], curve=(real, public, secret))
    assert "HANDSHAKE_SUCCEEDED" in events, events
    assert ab.a.held() == before
    ab.still_syncing()
    assert origin.hex() not in {o for o, _, _ in ab.a.held()}


def test_a_code_holder_cannot_speak_as_another_member(ab: Group2) -> None:
    """CURVE with the group's server key but the client's own key: a HI naming B (or A, or a
    node whose key is not the client's) is ignored, and DATA from it is dropped."""
    before = ab.a.held()
    public, secret = zmq.curve_keypair()
    real = z85.encode(ab.group.curve_server_public)
    for claim in (ab.b.node, ab.a.node, SigningKey().public.hex()):
        origin, frames = _messages(ab.group, bytes.fromhex(claim), ab.b.port)
        events, got = attack(ab.a.listen, frames, curve=(real, public, secret),
                             until=("HANDSHAKE_SUCCEEDED",), listen=0.5)
        assert "HANDSHAKE_SUCCEEDED" in events, events
        assert got == []
        assert ab.a.linked() == {ab.b.node}
        assert origin.hex() not in ab.a.client.status()["heads"]
    assert ab.a.held() == before
    ab.still_syncing()


# -- raw TCP garbage ---------------------------------------------------------------------------


def _greeting(mechanism: bytes, as_server: int = 0, major: int = 3) -> bytes:
    return (b"\xff" + bytes(8) + b"\x7f" + bytes([major, 0]) + mechanism.ljust(20, b"\x00")
            + bytes([as_server]) + bytes(31))


GARBAGE: dict[str, Callable[[], bytes]] = {
    "nothing": lambda: b"",
    "random bytes": lambda: os.urandom(1 + os.urandom(1)[0] * 16),
    "http": lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "half a greeting": lambda: _greeting(b"CURVE")[:30],
    "CURVE greeting, huge command length": lambda: (
        _greeting(b"CURVE") + b"\x06" + struct.pack("!Q", 2**62)),
    "CURVE greeting, HELLO of random bytes": lambda: (
        _greeting(b"CURVE") + b"\x04\xc8\x05HELLO" + os.urandom(194)),
    "CURVE greeting claiming to be a server": lambda: _greeting(b"CURVE", as_server=1),
    "NULL greeting, READY, huge message": lambda: (
        _greeting(b"NULL") + b"\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"
        + b"\x02" + struct.pack("!Q", 2**40)),
    "PLAIN greeting": lambda: _greeting(b"PLAIN") + b"\x04\x10\x05HELLO\x04user\x04pass",
    "ZMTP 1.0": lambda: b"\x05\x00hello" + os.urandom(64),
    "ZMTP 2.0": lambda: b"\xff" + bytes(8) + b"\x7f\x01\x05\x00" + os.urandom(64),
    "huge ZMTP 1.0 length": lambda: b"\xff" + struct.pack("!Q", 2**63) + b"\x7f",
}


def test_garbage_on_the_router_port_leaves_a_serving_and_syncing(ab: Group2) -> None:
    before = ab.a.held()
    opened = 0
    deadline = time.monotonic() + 20
    for round_ in range(8):
        for what, make in GARBAGE.items():
            assert time.monotonic() < deadline, "the loop itself is too slow"
            with socket.create_connection(("127.0.0.1", ab.a.port), timeout=2) as s:
                opened += 1
                with contextlib.suppress(OSError):  # A may cut us off mid-send: fine
                    s.sendall(make())
                    if round_ % 2:  # sometimes wait for A to react, sometimes leave at once
                        s.settimeout(0.05)
                        with contextlib.suppress(TimeoutError):
                            s.recv(4096)
            assert ab.a.alive(), f"A died after {what!r}: {ab.a.log.read_text()[-2000:]}"
        if round_ == 3:
            ab.still_syncing()  # and while it is being pestered
    assert opened == 8 * len(GARBAGE)
    ab.still_syncing()
    ab.held_only_members_notes(before)
    log = ab.a.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


# -- a member that breaks the protocol ---------------------------------------------------------


class Intruder:
    """An in-process Mesh holding the group's key (as a member would) with a fresh node key:
    it links to a daemon like any member and then sends what it likes over the link."""

    def __init__(self, group: Group) -> None:
        self.key = SigningKey()
        self.node = self.key.public
        self.ctx = zmq.asyncio.Context()
        self.links: asyncio.Queue[Link] = asyncio.Queue()
        self.mesh = Mesh(self.ctx, self.key, group, listen="tcp://127.0.0.1:0",
                         on_link=self.links.put_nowait)

    async def link(self, node: str) -> tuple[Link, asyncio.Event, list[bytes]]:
        """The next link (bounded), watched: (link, closed event, frames received)."""
        link = await asyncio.wait_for(self.links.get(), WAIT)
        assert link.node.hex() == node
        closed = asyncio.Event()
        frames: list[bytes] = []
        link.on_receive(frames.append)
        link.on_close(closed.set)
        return link, closed, frames

    def term(self) -> None:
        # term() waits for every socket: bounded, so a leaked socket fails instead of hanging
        t = threading.Thread(target=self.ctx.term, daemon=True)
        t.start()
        t.join(5)
        if t.is_alive():
            self.ctx.destroy(linger=0)
            raise AssertionError("the intruder's mesh left a ZeroMQ socket open")


def run_bounded(main: Callable[[], Any], timeout: float = 30.0) -> None:
    async def guarded() -> None:
        await asyncio.wait_for(main(), timeout)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"tasks left running: {left}"

    asyncio.run(guarded())


def test_members_sending_malformed_data_frames_get_their_links_closed_and_a_keeps_serving(
    ab: Group2,
) -> None:
    """Several members at once, each linked to A and then breaking the protocol its own way;
    A closes each of those links (and logs why), stores nothing, and keeps serving B."""
    a = ab.a
    ab.still_syncing()  # both hold notes of both origins: there is something to forge
    before = a.held()
    a_id, b_id = bytes.fromhex(a.node), bytes.fromhex(ab.b.node)
    a_own = [n for n in a.client.read(0)[0] if n["origin"] == a_id]
    gid = ab.group.id

    def hello(node: bytes, group: bytes = gid) -> bytes:
        return wire.encode(wire.Hello(wire.VERSION, group, node, {}, {}))

    cases: dict[str, Callable[[bytes], list[bytes]]] = {
        "bytes that are not CBOR": lambda me: [b"\xff\xfe garbage \x00" * 10],
        "CBOR that is no message": lambda me: [cbor2.dumps({"hello": "world"})],
        "an unknown message type": lambda me: [cbor2.dumps([99, 1, 2])],
        "a NOTES with wrong field types": lambda me: [
            cbor2.dumps([4, "origin", -1, b"", "x", 7])],
        "a HELLO of another group": lambda me: [hello(me, Group.new().id)],
        "a HELLO naming A itself": lambda me: [hello(a_id)],
        "A's next note, forged": lambda me: [hello(me), wire.encode(wire.Notes(
            a_id, len(a_own), a_own[-1]["id"], ("forged",), os.urandom(64)))],
        "B's first note, altered": lambda me: [hello(me), wire.encode(wire.Notes(
            b_id, 0, GENESIS, ("altered",), os.urandom(64)))],
    }
    intruders = {what: Intruder(ab.group) for what in cases}

    async def one(what: str, intruder: Intruder) -> None:
        await intruder.mesh.start()
        intruder.mesh.dial(a.listen)  # a static peer, like `zflood run --peer`
        link, closed, received = await intruder.link(a.node)
        # A's engine speaks first: its HELLO proves the link is up end to end
        for _ in range(int(WAIT / 0.01)):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received, f"{what}: A sent nothing on a fresh link"
        for frame in cases[what](intruder.node):
            link.send(frame)
        try:
            await asyncio.wait_for(closed.wait(), WAIT)
        except TimeoutError:
            raise AssertionError(f"A kept the link open after {what}") from None
        assert link.state == "closed"

    async def main() -> None:
        try:
            await asyncio.gather(*(one(w, i) for w, i in intruders.items()))
        finally:
            for intruder in intruders.values():
                await intruder.mesh.close()

    try:
        run_bounded(main)
    finally:
        for intruder in intruders.values():
            intruder.term()
    assert a.held() == before, "A's store changed"
    log = a.log.read_text()
    assert log.count("closing channel to") >= len(cases), log[-3000:]  # the engine's reasons
    for intruder in intruders.values():
        assert f"link to {intruder.node.hex()[:8]} closed: closed by the engine" in log, log
    assert "Traceback" not in log
    ab.still_syncing()


def test_a_routing_id_taken_over_for_a_moment_does_not_cut_a_link_for_good(ab: Group2) -> None:
    """A code holder connects to A's ROUTER with B's node id as its routing id; ROUTER_HANDOVER
    gives it that id and leaves B's own connection deaf. The mesh hears a peer only through
    its DEALER's HIs and takes every message by its CURVE key, never by routing id: A finds
    B silent, says so, B redials and takes its id back; B -> A syncs again."""
    public, secret = zmq.curve_keypair()
    real = z85.encode(ab.group.curve_server_public)
    events, _ = attack(ab.a.listen, [], curve=(real, public, secret),
                       identity=bytes.fromhex(ab.b.node), until=("HANDSHAKE_SUCCEEDED",),
                       listen=0.3)
    assert "HANDSHAKE_SUCCEEDED" in events, events
    # within two peer timeouts (Config.peer_timeout = 5 s) the mesh must have repaired it
    ab.b.client.publish("after the takeover")
    wait_for(lambda: ab.a.has("after the takeover"), 12.0,
             "B's note to reach A after the takeover")
    ab.still_syncing()


def test_a_member_cannot_claim_another_members_node_id_in_its_hello(ab: Group2) -> None:
    a = ab.a
    intruder = Intruder(ab.group)
    as_b = wire.encode(wire.Hello(wire.VERSION, ab.group.id, bytes.fromhex(ab.b.node), {}, {}))
    outcome: list[bool] = []

    async def main() -> None:
        await intruder.mesh.start()
        try:
            intruder.mesh.dial(a.listen)
            link, closed, _ = await intruder.link(a.node)
            link.send(as_b)
            try:
                await asyncio.wait_for(closed.wait(), 2.0)
                outcome.append(True)
            except TimeoutError:
                outcome.append(False)
        finally:
            await intruder.mesh.close()

    try:
        run_bounded(main)
    finally:
        intruder.term()
    assert outcome == [True], "A kept a link whose HELLO named B, not the linked node"
