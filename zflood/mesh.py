"""ZeroMQ links between group members, on asyncio: the Channels the engine talks over.

Theory of operation (ZRE-like). Each node binds one ROUTER for input and opens one DEALER per
peer for output; a peer link is the pair (its DEALER into our ROUTER, our DEALER into its).
What to dial, when a link is up or down, and what to give up on is decided by
`zflood.liveness` (HI, hears, nonce, knocks, silence, HI rate limits, dial caps): the mesh
feeds it every event with the loop's time and carries out the actions it returns. This module
holds the sockets, the framing and the CURVE/ZAP admission.

Security. Every ROUTER is a CURVE server holding the *group* key pair, whose public half is
never announced: only a holder of the join code can build a valid CURVE HELLO, so nobody else
can complete a handshake, read or inject. Every DEALER is a CURVE client holding the node's
own X25519 key (derived from its Ed25519 id). Our ZAP handler admits CURVE clients in our
domain only and returns the client key as User-Id, so a peer's identity comes from the
authenticated handshake: a HI naming node N counts only if N's X25519 key is that User-Id,
and every other message is taken as from the peer whose key its User-Id is. Routing ids play
no part: a member that took another's routing id (ROUTER_HANDOVER hands it over) gains nothing.

Static peers (`dial` without a node id) get a "knocker": a DEALER with a random routing id
that sends HIs marked KNOCK; the knocker's own id keeps it from colliding (ROUTER_HANDOVER)
with our proper DEALER to that peer, which uses our node id and is made from the peer's HI.

The reader hands the loop back between bursts bounded in messages, bytes and time: an awaited
receive that is already complete never yields, so without that a bulk sync would hold the
loop (the local API, the timers, the systemd watchdog) until the queue ran dry.

What waits for one peer is bounded in bytes: frames of `peer_track_from` or more are tracked
until ZeroMQ lets them go (`zflood.held`), and `Link.backlog` tells the engine, which stops
serving a peer that leaves `peer_backlog` unread.

One Mesh per zmq context: the ZAP handler is the context's, and it refuses any other socket
of that context that asks it (one with a ZAP domain set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Literal, cast

import zmq
import zmq.asyncio
from zmq.utils import z85

from . import liveness
from .config import DEFAULT, Config
from .endpoints import tcp_port
from .errors import LocalError
from .held import Held
from .identity import Group, SigningKey, x25519_public
from .liveness import (
    HEARING,
    HI_SIZE,
    KNOCK,
    MESH_VERSION,
    NOT_HEARING,
    Action,
    Liveness,
    hi_payload,
    short,
)
from .quietlog import QuietLog

__all__ = ["BYE", "DATA", "HEARING", "HI", "KNOCK", "MESH_VERSION", "NOT_HEARING", "Link",
           "Mesh", "hi_payload"]

log = logging.getLogger("zflood.mesh")

HI, DATA, BYE = b"H", b"D", b"B"
ZAP_DOMAIN = b"zflood"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# A BYE must get out on close, but a dead peer must not hold up the context's term().
_BYE_LINGER_MS = 200
_YIELD_TURNS = 4  # loop turns the reader gives up between bursts

_Socket = zmq.Socket[bytes]


class Link:
    """One working peer link, as the engine's Channel; made only by `Mesh`."""

    def __init__(self, mesh: Mesh, node: bytes) -> None:
        self.state: Literal["connected", "closed"] = "connected"
        self._mesh = mesh
        self._node = node
        self._receiver: Callable[[bytes], None] | None = None
        self._closer: Callable[[], None] | None = None
        self._inbox: deque[bytes] = deque()

    @property
    def node(self) -> bytes:
        """The peer's node id, which its CURVE key proved."""
        return self._node

    @property
    def address(self) -> str:
        """Where we dial the peer now."""
        return self._mesh.liveness.endpoint_of(self._node)

    def __repr__(self) -> str:
        return f"<Link {short(self.node)} {self.address} {self.state}>"

    def send(self, frame: bytes) -> None:
        """Never blocks; a frame that finds the queue full is dropped (the engine recovers)."""
        if self.state == "connected":
            self._mesh._send(self._node, DATA, frame)

    @property
    def backlog(self) -> int:
        """Bytes of frames of `peer_track_from` or more that ZeroMQ still holds for the peer
        (the engine stops serving it past `peer_backlog`)."""
        return self._mesh._held.held(self._node)

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
            self._mesh._close_link(self._node)

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
        self.liveness = Liveness(self.node, config)
        self._dealers: dict[bytes, _Socket] = {}  # node -> our DEALER to it
        self._held: Held[bytes] = Held()  # node -> bytes its DEALER still holds
        self._links: dict[bytes, Link] = {}
        self._knockers: dict[str, _Socket] = {}  # static peer endpoint -> knocker DEALER
        self._router: zmq.asyncio.Socket | None = None
        self._zap: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self._closed = False

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
        log.info("mesh %s listening on %s", short(self.node), endpoint)
        return endpoint

    @property
    def port(self) -> int:
        if not self._port:
            raise LocalError("the mesh is not started")
        return self._port

    def dial(self, endpoint: str, node: bytes | None = None) -> None:
        """Idempotent. `node` comes from discovery (a claim, dialled within the caps); None
        for a static peer."""
        if self._closed or not self._port:
            raise LocalError("dial() needs a started, open mesh")
        tcp_port(endpoint)
        if node is None:
            routing_id = b"k" + os.urandom(15)  # never 32 bytes, so never a node id
            self._do(self.liveness.knock(self._now(), endpoint, routing_id))
            return
        if len(node) != 32:
            raise LocalError("a node id is 32 bytes")
        self._do(self.liveness.announce(self._now(), node, endpoint))

    def forget(self, node: bytes) -> None:
        """Stop dialling `node`; a live link still ends only by BYE or silence."""
        self._do(self.liveness.forget(self._now(), node))

    def cut(self, node: bytes) -> None:
        """Keep no link with `node` until `heal(node)`: BYE, then ignore it. The rest of the
        mesh goes on, and notes still reach it (and come from it) through other members."""
        self._do(self.liveness.cut(self._now(), node))

    def heal(self, node: bytes) -> None:
        """Undo `cut(node)`: dial it again where it was announced, and hear it again."""
        self._do(self.liveness.heal(self._now(), node))

    def links(self) -> list[dict[str, str | float | None]]:
        return self.liveness.links(self._now())

    def stats(self) -> dict[str, int]:
        """What the liveness bounds hold and have refused (records waiting, HIs dropped), and
        the bytes ZeroMQ holds for peers (`held_bytes`)."""
        return {**self.liveness.stats(), "sockets": len(self._dealers) + len(self._knockers),
                "held_bytes": self._held.total()}

    async def close(self) -> None:
        """BYE to every peer, close every link and socket, stop every task."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for node, link in list(self._links.items()):
            log.info("link to %s closed: mesh closed", short(node))
            link._closed()
        self._links.clear()
        for dealer in self._dealers.values():
            with contextlib.suppress(zmq.Again):
                dealer.send_multipart([BYE], zmq.NOBLOCK)
            dealer.close(linger=_BYE_LINGER_MS)
        self._dealers.clear()
        self._held = Held()
        for dealer in self._knockers.values():
            dealer.close(linger=0)
        self._knockers.clear()
        for sock in (self._router, self._zap):
            if sock is not None:
                sock.close(linger=0)
        log.info("mesh %s closed", short(self.node))

    # -- carrying out what liveness decides ----------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case liveness.SendHi(node, hears):
                    dealer = self._dealers.get(node)
                    if dealer is not None:
                        self._send_hi(dealer, hears)
                case liveness.Dial(node, endpoint):
                    old = self._dealers.pop(node, None)
                    if old is not None:
                        old.close(linger=0)
                        self._held.forget(node)
                    dealer = self._dealer(self.node, endpoint)
                    if dealer is None:
                        self.liveness.dial_failed(node)
                    else:
                        self._dealers[node] = dealer
                        log.debug("dialling %s at %s", short(node), endpoint)
                case liveness.Hang(node, linger):
                    old = self._dealers.pop(node, None)
                    if old is not None:
                        old.close(linger=_BYE_LINGER_MS if linger else 0)
                        self._held.forget(node)
                case liveness.LinkUp(node):
                    if not self._closed:
                        self._link_up(node)
                case liveness.LinkDown(node, reason, bye):
                    link = self._links.pop(node, None)
                    if bye:
                        self._send(node, BYE)
                    if link is not None:
                        log.info("link to %s closed: %s", short(node), reason)
                        link._closed()
                case liveness.Knock(endpoint, routing_id):
                    dealer = self._dealer(routing_id, endpoint)
                    if dealer is None:
                        self.liveness.knock_failed(endpoint)
                    else:
                        self._knockers[endpoint] = dealer
                        self._send_hi(dealer, KNOCK)
                case liveness.KnockAgain(endpoint):
                    if (dealer := self._knockers.get(endpoint)) is not None:
                        self._send_hi(dealer, KNOCK)
                case liveness.Unknock(endpoint):
                    if (dealer := self._knockers.pop(endpoint, None)) is not None:
                        dealer.close(linger=0)

    def _link_up(self, node: bytes) -> None:
        link = self._links[node] = Link(self, node)
        log.info("linked to %s at %s", short(node), link.address)
        try:
            self._on_link(link)
        except Exception:
            log.exception("on_link callback failed")

    def _close_link(self, node: bytes) -> None:
        self._do(self.liveness.close_link(self._now(), node))

    # -- sockets -------------------------------------------------------------------------------

    def _dealer(self, routing_id: bytes, endpoint: str) -> _Socket | None:
        dealer: _Socket = zmq.Socket(self._ctx, zmq.DEALER)
        dealer.linger = 0
        dealer.sndhwm = dealer.rcvhwm = self._config.send_hwm
        dealer.copy_threshold = self._config.peer_track_from  # smaller frames are copied
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

    def _send(self, node: bytes, kind: bytes, payload: bytes | None = None) -> None:
        dealer = self._dealers.get(node)
        if dealer is None:
            return
        with contextlib.suppress(zmq.Again):  # full queue: drop, the engine recovers
            if payload is None:
                dealer.send_multipart([kind], zmq.NOBLOCK)
            elif len(payload) < self._config.peer_track_from:
                dealer.send_multipart([kind, payload], zmq.NOBLOCK)
            else:  # counted in bytes until ZeroMQ lets it go: see zflood.held
                tracker = dealer.send_multipart([kind, payload], zmq.NOBLOCK, copy=False,
                                                track=True)
                self._held.add(node, tracker, len(payload))

    def _send_hi(self, dealer: _Socket, hears: int) -> None:
        hi = hi_payload(self.node, self._port, self._nonce, hears)
        with contextlib.suppress(zmq.Again):
            dealer.send_multipart([HI, hi], zmq.NOBLOCK)

    # -- tasks ---------------------------------------------------------------------------------

    async def _serve_zap(self, zap: zmq.asyncio.Socket) -> None:
        """RFC 27: admit CURVE clients in our domain; the User-Id is the client key in hex."""
        refusals = QuietLog(log)
        while True:
            request = await zap.recv_multipart()
            if len(request) < 8:
                continue
            address, _, version, request_id, domain, peer_ip, _, mechanism, *creds = request
            if version != b"1.0":
                continue
            user_id = creds[0].hex() if len(creds) == 1 else ""
            address_text = peer_ip.decode(errors="replace")
            if domain != ZAP_DOMAIN or mechanism != b"CURVE" or not user_id:
                refusals.fault(self._now(), "refused handshake", repr(peer_ip),
                               "refused a %r handshake from %r", mechanism, peer_ip,
                               level=logging.INFO)
                reply = [b"400", b"CURVE in the zflood domain only", b""]
            elif not self.liveness.admits(user_id, address_text):
                refusals.fault(self._now(), "refused member", repr(peer_ip),
                               "refused the handshake of a new member at %s: it has %d",
                               address_text, self._config.members_per_host,
                               level=logging.INFO)
                reply = [b"400", b"too many members at this address", b""]
            else:
                reply = [b"200", b"OK", user_id.encode()]
            await zap.send_multipart([address, b"", b"1.0", request_id, *reply, b""])

    async def _receive(self, router: zmq.asyncio.Socket) -> None:
        assert self._loop is not None
        loop, c = self._loop, self._config
        # Messages and bytes per burst. The engine does most of a burst's work when the batch
        # ends (one verify and one transaction per run of notes), so the time spent
        # dispatching says little: from each burst's whole cost, learn how many messages (a
        # member minting origins sends thousands of one-note runs, a verify each) and how
        # many bytes (a bulk sync) fit in burst_time.
        budget, cap = c.burst_bytes, c.burst_messages
        while True:
            frames = await router.recv_multipart(copy=False)
            start = now = loop.time()
            size = n = 0
            # Whatever else has arrived is handled in the same batch (the engine's
            # Node.batch): one signature check and one transaction for a run of pushes.
            with self._batch():
                for n in range(1, cap + 1):
                    try:
                        self._dispatch(frames, now)
                    except Exception:  # one bad message (or engine callback) must not stop us
                        log.exception("mesh: error handling a message")
                    size += sum(len(f) for f in frames)
                    now = loop.time()
                    if n == cap or size >= budget or now - start >= c.burst_time:
                        break  # before taking the next message, which would be lost
                    try:
                        # with NOBLOCK the future is done at once: a message, or Again
                        ready = router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        frames = cast("asyncio.Future[list[zmq.Frame]]", ready).result()
                    except zmq.Again:
                        break
            scale = c.burst_time / max(loop.time() - start, 1e-6)
            if n == cap or scale < 1:  # the cap held, or the burst took too long: it says
                cap = max(1, min(c.burst_messages, int((cap + n * scale) / 2)))
            if size >= min(budget, c.batch_bytes):  # bulk: its cost per byte means something
                budget = int(min(c.burst_bytes, (budget + size * scale) / 2))
            # Awaiting a receive that is already done would not yield. One turn of the loop is
            # not enough either: what another task waits for (a pyzmq poll, say) reaches it
            # through a few callbacks, one per turn, and each turn would run another burst.
            for _ in range(_YIELD_TURNS):
                await asyncio.sleep(0)

    async def _run_timer(self) -> None:
        assert self._loop is not None
        c = self._config
        period = min(c.heartbeat, c.peer_timeout / 4, c.reconnect)
        while True:
            try:
                self._do(self.liveness.tick(self._loop.time()))
            except Exception:
                log.exception("mesh: error in the timer")
            await asyncio.sleep(period)

    # -- messages ------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _dispatch(self, frames: list[zmq.Frame], now: float) -> None:
        if len(frames) < 2:
            return
        try:
            user_id = str(frames[1].get("User-Id"))
        except zmq.ZMQError:
            return  # not from an authenticated connection: cannot happen on a CURVE server
        kind = frames[1].bytes
        if kind == DATA and len(frames) == 3:
            node = self.liveness.data(now, user_id)
            if node is not None and (link := self._links.get(node)) is not None:
                link._deliver(frames[2].bytes)
            return
        peer_ip = str(frames[1].get("Peer-Address"))
        if kind == HI and len(frames) == 3:
            payload = frames[2].bytes if len(frames[2]) == HI_SIZE else b""
            self._do(self.liveness.hi(now, frames[0].bytes, user_id, peer_ip, payload))
        elif kind == BYE and len(frames) == 2:
            self._do(self.liveness.bye(now, user_id))
        else:
            self._do(self.liveness.malformed(now, user_id, peer_ip))
