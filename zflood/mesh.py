"""ZeroMQ links between group members, on asyncio: the Channels the engine talks over.

Theory of operation (ZRE-like). Each node binds one ROUTER for input and opens one DEALER per
peer for output; a peer link is the pair (its DEALER into our ROUTER, our DEALER into its).

Security. Every ROUTER is a CURVE server holding the *group* key pair, whose public half is
never announced: only a holder of the join code can build a valid CURVE HELLO, so nobody else
can complete a handshake, read or inject. Every DEALER is a CURVE client holding the node's
own X25519 key (derived from its Ed25519 id). Our ZAP handler admits CURVE clients in our
domain only and returns the client key as User-Id, so a peer's identity comes from the
authenticated handshake: a HI naming node N counts only if N's X25519 key is that User-Id,
and every other message is taken as from the peer whose key its User-Id is. Routing ids play
no part: a member that took another's routing id (ROUTER_HANDOVER hands it over) gains nothing.

Liveness. HI (node id, our ROUTER port, session nonce, "hears you") is the heartbeat; it goes
out every `heartbeat` on every DEALER, and at once when our "hears" for that peer flips. A
link comes up when we hear the peer, the peer says it hears us, and we have a DEALER to it:
two round trips from first contact. It goes down on BYE, on silence for `peer_timeout`, when
the peer says it no longer hears us, or when its nonce changes (it restarted). Nothing here
trusts mDNS: a link exists only while HIs arrive. A DEALER stays while the peer is announced
(`dial` with a node id) or while we hear it; ZeroMQ's own reconnect does the redialling.

Static peers (`dial` without a node id) get a "knocker": a DEALER with a random routing id
that sends HIs marked KNOCK, which the receiver takes as presence but not as "hears". They make
the peer dial us back; the knocker's own id keeps it from colliding (ROUTER_HANDOVER) with our
proper DEALER to that peer, which uses our node id and is made from the peer's HI.

One Mesh per zmq context: the ZAP handler is the context's, and it refuses any other socket
of that context that asks it (one with a ZAP domain set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, cast

import zmq
import zmq.asyncio
from zmq.utils import z85

from .config import DEFAULT, Config
from .endpoints import tcp_endpoint, tcp_parts, tcp_port
from .errors import LocalError
from .identity import Group, SigningKey, ed25519_to_x25519_public, x25519_public

log = logging.getLogger("zflood.mesh")

HI, DATA, BYE = b"H", b"D", b"B"
_HI = struct.Struct("!B32sH16sB")  # mesh version, node id, ROUTER port, session nonce, hears
MESH_VERSION = 1  # of HI/DATA/BYE framing; the engine's HELLO carries the protocol's own
NOT_HEARING, HEARING, KNOCK = 0, 1, 2  # the "hears" byte; KNOCK: a knocker's, says nothing
ZAP_DOMAIN = b"zflood"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# A BYE must get out on close, but a dead peer must not hold up the context's term().
_BYE_LINGER_MS = 200
_BURST = 1000  # most messages handled in one batch before the loop gets a turn

_Socket = zmq.Socket[bytes]


def hi_payload(node: bytes, port: int, nonce: bytes, hears: int) -> bytes:
    """The body of a HI message (after the kind frame HI)."""
    return _HI.pack(MESH_VERSION, node, port, nonce, hears)


def _short(node: bytes) -> str:
    return node.hex()[:12]


class Link:
    """One working peer link, as the engine's Channel; made only by `Mesh`."""

    def __init__(self, mesh: Mesh, peer: _Peer) -> None:
        self.state: Literal["connected", "closed"] = "connected"
        self._mesh = mesh
        self._peer = peer
        self._receiver: Callable[[bytes], None] | None = None
        self._closer: Callable[[], None] | None = None
        self._inbox: deque[bytes] = deque()

    @property
    def node(self) -> bytes:
        """The peer's node id, which its CURVE key proved."""
        return self._peer.node

    @property
    def address(self) -> str:
        """Where we dial the peer now."""
        return self._peer.address

    def __repr__(self) -> str:
        return f"<Link {_short(self.node)} {self.address} {self.state}>"

    def send(self, frame: bytes) -> None:
        """Never blocks; a frame that finds the queue full is dropped (the engine recovers)."""
        if self.state == "connected":
            self._mesh._send(self._peer, DATA, frame)

    def on_receive(self, callback: Callable[[bytes], None]) -> None:
        if self._receiver is not None:
            raise LocalError("on_receive is set once per channel")
        self._receiver = callback
        while self._inbox:
            callback(self._inbox.popleft())

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._closer is not None:
            raise LocalError("on_close is set once per channel")
        self._closer = callback
        if self.state == "closed":
            callback()

    def close(self) -> None:
        """Idempotent; tells the peer (BYE) so both ends drop the link together."""
        if self.state == "connected":
            self._mesh._drop_link(self._peer, "closed by the engine", bye=True)

    def _deliver(self, frame: bytes) -> None:
        if self._receiver is None or self._inbox:  # keep order behind frames still waiting
            self._inbox.append(frame)
        else:
            self._receiver(frame)

    def _closed(self) -> None:
        self.state = "closed"  # frames already received still wait for on_receive
        if self._closer is not None:
            try:
                self._closer()
            except Exception:  # the engine's bug must not stop the mesh closing
                log.exception("on_close callback of %r failed", self)


@dataclass(eq=False)
class _Peer:
    node: bytes
    user_id: str  # hex X25519 key its CURVE handshake must show
    dealer: _Socket | None = None
    address: str = ""
    announced: bool = False  # dial() named it: keep dialling until forget()
    heard_at: float | None = None  # last HI of its DEALER (or DATA); None: we don't hear it
    knocked_at: float = 0.0  # last HI of its knocker (a static peer's presence)
    nonce: bytes | None = None
    they_hear: bool = False
    heard_us_at: float = 0.0  # last HI saying it hears us, or when we last (re)dialled it
    seen_at: str = ""  # its ROUTER at the address its connections come from
    link: Link | None = None
    retry_at: float = 0.0


class Mesh:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        key: SigningKey,
        group: Group,
        *,
        listen: str = "tcp://0.0.0.0:0",
        config: Config = DEFAULT,
        on_link: Callable[[Link], None],
        batch: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self.node = key.public
        self._batch = batch
        self._ctx = ctx
        self._key = key
        self._group = group
        self._listen = listen
        self._config = config
        self._on_link = on_link
        self._nonce = os.urandom(16)  # tells peers this incarnation from the previous one
        secret = key.curve_secret()
        # every DEALER's CURVE keys (ours, and the group's server key), derived once
        self._curve = (z85.encode(secret), z85.encode(x25519_public(secret)),
                       z85.encode(group.curve_server_public))
        self._peers: dict[bytes, _Peer] = {}
        self._by_user: dict[str, _Peer] = {}  # the same peers by the CURVE key they must show
        self._cut: set[bytes] = set()  # nodes we keep no link with until heal()
        self._knockers: dict[str, tuple[bytes, _Socket]] = {}  # endpoint -> (routing id, dealer)
        self._router: zmq.asyncio.Socket | None = None
        self._zap: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self._closed = False
        self._next_heartbeat = 0.0

    # -- public API ----------------------------------------------------------------------------

    async def start(self) -> str:
        """Start the ZAP handler, then bind the ROUTER; returns the bound endpoint."""
        if self._loop is not None or self._closed:
            raise LocalError("a mesh starts once")
        self._loop = asyncio.get_running_loop()
        try:
            # Without a ZAP handler a CURVE server admits any client: bind it first.
            self._zap = self._ctx.socket(zmq.ROUTER)
            self._zap.linger = 0
            self._zap.bind(_ZAP_ENDPOINT)
            self._tasks.append(asyncio.create_task(self._serve_zap(self._zap)))
            router = self._router = self._ctx.socket(zmq.ROUTER)
            router.linger = 0
            router.curve_server = True
            router.curve_secretkey = z85.encode(self._group.curve_server_secret)
            router.zap_domain = ZAP_DOMAIN
            with contextlib.suppress(AttributeError, zmq.ZMQError):  # draft option in 4.3
                router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            router.router_handover = 1  # a restarted peer takes its routing id back
            router.maxmsgsize = self._config.max_frame
            router.sndhwm = router.rcvhwm = self._config.send_hwm
            try:
                router.bind(self._listen)
            except zmq.ZMQError as e:
                raise LocalError(f"cannot listen on {self._listen}: {e.strerror}") from None
            endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._port = tcp_port(endpoint)
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._receive(router)))
        self._tasks.append(asyncio.create_task(self._run_timer()))
        log.info("mesh %s listening on %s", _short(self.node), endpoint)
        return endpoint

    @property
    def port(self) -> int:
        if not self._port:
            raise LocalError("the mesh is not started")
        return self._port

    def dial(self, endpoint: str, node: bytes | None = None) -> None:
        """Idempotent. `node` comes from discovery; None for a static peer."""
        if self._closed or not self._port:
            raise LocalError("dial() needs a started, open mesh")
        tcp_port(endpoint)
        if node is None:
            if endpoint not in self._knockers:
                routing_id = b"k" + os.urandom(15)  # never 32 bytes, so never a node id
                dealer = self._dealer(routing_id, endpoint)
                if dealer is not None:
                    self._knockers[endpoint] = (routing_id, dealer)
                    self._send_hi(dealer, KNOCK)
            return
        if len(node) != 32:
            raise LocalError("a node id is 32 bytes")
        if node == self.node:
            return
        peer = self._peer(node)
        peer.announced = True
        if node in self._cut:
            peer.address = peer.address or endpoint  # where heal() dials it
            return
        # A working DEALER beats a new address: only move one that has no link on it.
        if peer.dealer is None or (peer.address != endpoint and peer.link is None):
            self._connect(peer, endpoint, self._now())

    def forget(self, node: bytes) -> None:
        """Stop dialling `node`; a live link still ends only by BYE or silence."""
        peer = self._peers.get(node)
        if peer is not None:
            peer.announced = False
            if peer.heard_at is None:
                self._remove(peer)

    def cut(self, node: bytes) -> None:
        """Keep no link with `node` until `heal(node)`: BYE, then ignore it. The rest of the
        mesh goes on, and notes still reach it (and come from it) through other members."""
        self._cut.add(node)
        peer = self._peers.get(node)
        if peer is None:
            return
        self._drop_link(peer, "cut here", bye=True)
        peer.heard_at = None
        if peer.dealer is not None:
            peer.dealer.close(linger=_BYE_LINGER_MS)
            peer.dealer = None
        log.info("cut the link to %s", _short(node))

    def heal(self, node: bytes) -> None:
        """Undo `cut(node)`: dial it again where it was announced, and hear it again."""
        if node not in self._cut:
            return
        self._cut.discard(node)
        log.info("healing the link to %s", _short(node))
        peer = self._peers.get(node)
        if peer is not None and peer.address:
            self._connect(peer, peer.address, self._now())

    def links(self) -> list[dict[str, str]]:
        rows = [
            {
                "node": p.node.hex(),
                "address": p.address,
                "state": "connected" if p.link is not None
                else "cut" if p.node in self._cut else "connecting",
            }
            for p in self._peers.values()
        ]
        rows += [{"node": "", "address": e, "state": "dialling"} for e in self._knockers]
        return rows

    async def close(self) -> None:
        """BYE to every peer, close every link and socket, stop every task."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for peer in list(self._peers.values()):
            self._drop_link(peer, "mesh closed", bye=False)
            self._send(peer, BYE)
            if peer.dealer is not None:
                peer.dealer.close(linger=_BYE_LINGER_MS)
                peer.dealer = None
        self._peers.clear()
        self._by_user.clear()
        for _, dealer in self._knockers.values():
            dealer.close(linger=0)
        self._knockers.clear()
        for sock in (self._router, self._zap):
            if sock is not None:
                sock.close(linger=0)
        log.info("mesh %s closed", _short(self.node))

    # -- sockets -------------------------------------------------------------------------------

    def _dealer(self, routing_id: bytes, endpoint: str) -> _Socket | None:
        dealer: _Socket = zmq.Socket(self._ctx, zmq.DEALER)
        dealer.linger = 0
        dealer.sndhwm = dealer.rcvhwm = self._config.send_hwm
        # After a partition the kernel would retry a stalled connection with exponential
        # backoff (22 s and more between tries after a 30 s outage), and the link would heal
        # only then. Give up on unacknowledged data after peer_timeout instead: ZeroMQ then
        # dials afresh every 100 ms and the link is back as soon as the network is. A dial
        # into a partition is likewise given up after a heartbeat, not after SYN backoff.
        dealer.setsockopt(zmq.TCP_MAXRT, int(self._config.peer_timeout * 1000))
        dealer.setsockopt(zmq.CONNECT_TIMEOUT, int(self._config.heartbeat * 1000))
        dealer.routing_id = routing_id
        dealer.curve_secretkey, dealer.curve_publickey, dealer.curve_serverkey = self._curve
        try:
            dealer.connect(endpoint)
        except zmq.ZMQError as e:
            log.warning("cannot dial %s: %s", endpoint, e)
            dealer.close()
            return None
        return dealer

    def _connect(self, peer: _Peer, endpoint: str, now: float) -> None:
        for other in list(self._peers.values()):
            # One ROUTER endpoint is one node: two of our DEALERs there (say, a crashed
            # node's lingering record) would steal each other's routing id forever.
            if other is not peer and other.address == endpoint and other.heard_at is None:
                self._remove(other)
        if peer.dealer is not None:
            peer.dealer.close(linger=0)
        peer.dealer = self._dealer(self.node, endpoint)
        peer.address = endpoint
        peer.heard_us_at = now
        log.debug("dialling %s at %s", _short(peer.node), endpoint)
        self._send_hi_to(peer)

    def _send(self, peer: _Peer, kind: bytes, payload: bytes | None = None) -> None:
        if peer.dealer is not None:
            message = [kind] if payload is None else [kind, payload]
            with contextlib.suppress(zmq.Again):  # full queue: drop, the engine recovers
                peer.dealer.send_multipart(message, zmq.NOBLOCK)

    def _send_hi(self, dealer: _Socket, hears: int) -> None:
        hi = hi_payload(self.node, self._port, self._nonce, hears)
        with contextlib.suppress(zmq.Again):
            dealer.send_multipart([HI, hi], zmq.NOBLOCK)

    def _send_hi_to(self, peer: _Peer) -> None:
        if peer.dealer is not None:
            self._send_hi(peer.dealer, HEARING if peer.heard_at is not None else NOT_HEARING)

    # -- tasks ---------------------------------------------------------------------------------

    async def _serve_zap(self, zap: zmq.asyncio.Socket) -> None:
        """RFC 27: admit CURVE clients in our domain; the User-Id is the client key in hex."""
        while True:
            request = await zap.recv_multipart()
            if len(request) < 8:
                continue
            address, _, version, request_id, domain, peer_ip, _, mechanism, *creds = request
            if version != b"1.0":
                continue
            if domain == ZAP_DOMAIN and mechanism == b"CURVE" and len(creds) == 1:
                reply = [b"200", b"OK", creds[0].hex().encode()]
            else:
                log.info("refused a %r handshake from %r", mechanism, peer_ip)
                reply = [b"400", b"CURVE in the zflood domain only", b""]
            await zap.send_multipart([address, b"", b"1.0", request_id, *reply, b""])

    async def _receive(self, router: zmq.asyncio.Socket) -> None:
        assert self._loop is not None
        while True:
            frames = await router.recv_multipart(copy=False)
            now = self._loop.time()
            # Whatever else has arrived is handled in the same batch (the engine's
            # Node.batch): one signature check and one transaction for a run of pushes.
            with self._batch():
                for _ in range(_BURST):
                    try:
                        self._dispatch(frames, now)
                    except Exception:  # one bad message (or engine callback) must not stop us
                        log.exception("mesh: error handling a message")
                    try:
                        # with NOBLOCK the future is done at once: a message, or Again
                        ready = router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        frames = cast("asyncio.Future[list[zmq.Frame]]", ready).result()
                    except zmq.Again:
                        break

    async def _run_timer(self) -> None:
        assert self._loop is not None
        c = self._config
        period = min(c.heartbeat, c.peer_timeout / 4, c.reconnect)
        while True:
            try:
                self._tick(self._loop.time())
            except Exception:
                log.exception("mesh: error in the timer")
            await asyncio.sleep(period)

    # -- protocol ------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _peer(self, node: bytes) -> _Peer:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(node, ed25519_to_x25519_public(node).hex())
            self._by_user[peer.user_id] = peer
        return peer

    def _remove(self, peer: _Peer, linger: int = 0) -> None:
        if peer.dealer is not None:
            peer.dealer.close(linger=linger)
            peer.dealer = None
        self._peers.pop(peer.node, None)
        self._by_user.pop(peer.user_id, None)

    def _dispatch(self, frames: list[zmq.Frame], now: float) -> None:
        if len(frames) < 2:
            return
        try:
            user_id = str(frames[1].get("User-Id"))
        except zmq.ZMQError:
            return  # not from an authenticated connection: cannot happen on a CURVE server
        kind = frames[1].bytes
        if kind == HI and len(frames) == 3 and len(frames[2]) == _HI.size:
            peer_ip = str(frames[1].get("Peer-Address"))
            version, node, port, nonce, hears = _HI.unpack(frames[2].bytes)
            if version != MESH_VERSION:
                log.debug("ignored a HI of mesh version %d from %s", version, peer_ip)
                return
            if hears <= KNOCK and port:
                self._on_hi(frames[0].bytes, user_id, peer_ip, node, port, nonce, hears, now)
                return
        peer = self._by_user.get(user_id)
        if peer is None:
            log.debug("dropped a message from unknown %s at %s", user_id[:12],
                      frames[1].get("Peer-Address"))
        elif kind == DATA and len(frames) == 3:
            if peer.link is not None:
                peer.heard_at = now
                peer.link._deliver(frames[2].bytes)
        elif kind == BYE and len(frames) == 2:
            self._lost(peer, "said goodbye", now)
        else:
            log.warning("malformed message from %s: closing its link", _short(peer.node))
            self._drop_link(peer, "malformed message", bye=True, now=now)

    def _on_hi(
        self,
        routing_id: bytes,
        user_id: str,
        peer_ip: str,
        node: bytes,
        port: int,
        nonce: bytes,
        hears: int,
        now: float,
    ) -> None:
        peer = self._peers.get(node)
        expected = peer.user_id if peer else ed25519_to_x25519_public(node).hex()
        if user_id != expected:
            log.warning("HI naming %s came with key %s: ignored", _short(node), user_id[:12])
            return
        if node == self.node:
            self._dialled_ourselves(routing_id, tcp_endpoint(peer_ip, port))
            return
        if node in self._cut:
            return
        peer = self._peer(node)
        restarted = peer.nonce is not None and peer.nonce != nonce
        heard_us = peer.they_hear and not restarted
        if restarted:
            self._drop_link(peer, "peer restarted", bye=False, now=now)
            peer.retry_at = now  # a new incarnation, not a flapping link: relink at once
        peer.nonce = nonce
        peer.seen_at = tcp_endpoint(peer_ip, port)
        if hears == KNOCK:
            # Presence only: it asks us to dial it. We hear a peer only through HIs from its
            # own DEALER, so a DEALER of its that went deaf (its routing id handed over to
            # another connection, say) shows as silence, not hidden behind the knocks.
            peer.knocked_at = now
            # Our DEALER may aim at an old address (it restarted on another port, or a stale
            # mDNS record): unless it has a link, move it to where the knock came from.
            stale = peer.link is None and peer.address != peer.seen_at and (
                restarted or now - peer.heard_us_at > self._config.peer_timeout
            )
            if peer.dealer is None or stale:
                self._connect(peer, peer.seen_at, now)
            elif restarted:
                self._send_hi_to(peer)
            return
        hears_changed = restarted or peer.heard_at is None  # restarted: it needs our HI now
        peer.heard_at = now
        if hears == HEARING:
            peer.they_hear = True
            peer.heard_us_at = now
        else:
            self._drop_link(peer, "peer no longer hears us", bye=False, now=now)
        if peer.dealer is None:  # it dialled us first (we are its static peer): dial back
            self._connect(peer, tcp_endpoint(peer_ip, port), now)
        elif (parts := tcp_parts(peer.address)) and int(parts[1]) != port:
            self._connect(peer, f"tcp://{parts[0]}:{port}", now)  # restarted on a new port
        elif heard_us and hears == NOT_HEARING:
            # It heard us, now it does not, yet we hear it: our connection may be the deaf
            # one. A fresh one takes our routing id back (ROUTER_HANDOVER) at once.
            log.info("%s stopped hearing us: redialling it", _short(peer.node))
            self._connect(peer, peer.seen_at or peer.address, now)
        elif hears_changed:
            self._send_hi_to(peer)
        self._maybe_link(peer, now)

    def _dialled_ourselves(self, routing_id: bytes, here: str) -> None:
        """Our own HI came back: drop the DEALER that sent it."""
        for endpoint, (knocker_id, dealer) in list(self._knockers.items()):
            if knocker_id == routing_id:
                log.info("static peer %s is ourselves: not dialling it", endpoint)
                dealer.close(linger=0)
                del self._knockers[endpoint]
        if routing_id == self.node:  # one of our node DEALERs: the one aimed at `here`
            for other in list(self._peers.values()):
                if other.address == here and other.heard_at is None:
                    log.info("%s's record points at us: not dialling it", _short(other.node))
                    self._remove(other)

    def _maybe_link(self, peer: _Peer, now: float) -> None:
        if (
            peer.link is None
            and peer.dealer is not None
            and peer.heard_at is not None
            and peer.they_hear
            and now >= peer.retry_at
            and not self._closed
        ):
            link = peer.link = Link(self, peer)
            log.info("linked to %s at %s", _short(peer.node), peer.address)
            try:
                self._on_link(link)
            except Exception:
                log.exception("on_link callback failed")

    def _drop_link(self, peer: _Peer, reason: str, *, bye: bool, now: float | None = None) -> None:
        peer.they_hear = False  # the next link needs a fresh "hears" from the peer
        link, peer.link = peer.link, None
        if link is None:
            return
        peer.retry_at = (self._now() if now is None else now) + self._config.reconnect
        if bye:
            self._send(peer, BYE)
        log.info("link to %s closed: %s", _short(peer.node), reason)
        link._closed()

    def _lost(self, peer: _Peer, reason: str, now: float) -> None:
        """We no longer hear the peer (timeout or BYE)."""
        self._drop_link(peer, reason, bye=False, now=now)
        peer.heard_at = None
        self._send_hi_to(peer)  # our "hears" flipped: if it hears us, it redials
        if not peer.announced:
            self._remove(peer, _BYE_LINGER_MS)  # it dialled us; it will again if it comes back

    def _tick(self, now: float) -> None:
        timeout = self._config.peer_timeout
        for peer in list(self._peers.values()):
            if peer.node in self._cut:
                continue
            if peer.heard_at is None and not peer.announced and now - peer.knocked_at > timeout:
                self._remove(peer)  # knocked, never dialled us properly, and knocks no more
                continue
            if peer.heard_at is not None and now - peer.heard_at > timeout:
                self._lost(peer, f"silent for {now - peer.heard_at:.1f}s", now)
                continue
            if peer.heard_at is not None and now - peer.heard_us_at > timeout:
                # It is alive but our HIs do not reach it: our connection may be one whose
                # routing id its ROUTER handed over, which libzmq leaves open but deaf.
                # Or the address we were given is not the one it is reachable at: redial
                # where its own connections come from.
                log.info("%s does not hear us: redialling it", _short(peer.node))
                self._connect(peer, peer.seen_at or peer.address, now)
            self._maybe_link(peer, now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self._config.heartbeat
            for peer in self._peers.values():
                self._send_hi_to(peer)
            for _, dealer in self._knockers.values():
                self._send_hi(dealer, KNOCK)
