"""The local API's daemon side: `LocalAPI` serves a PUB socket of notes and a control socket.

Theory of operation. `LocalAPI` lives on the daemon's asyncio loop beside the engine. It
subscribes to the node for new notes only (`start=node.count`) and sends each one, as it is
delivered, on a PUB socket as [b"note", CBOR map] (see `protocol.note_map`). PUB never blocks:
a slow subscriber loses messages once its queue is full, by design. The store is the truth, and
every note carries its local arrival `index`, so a reader that sees a jump in indices (or
suspects a loss) reads what it missed through the control socket.

The control socket is a ROUTER; a request is one CBOR map, the reply one CBOR map echoing the
request's "id". Frames in front of the request (a REQ client's empty delimiter, a proxy's
routing ids) are returned as they came. Each time the socket is readable every pending request
is handled inside one `node.batch()`, so a burst of publishes costs one signature and one frame
per peer. ZMQ_MAXMSGSIZE drops a request larger than a frame before it is parsed (ZeroMQ then
cuts that connection; `Client` refuses to send one); anything else that is wrong gets
{"ok": false, "error": "..."}. The "link" op {node, up} cuts (up false) or heals the daemon's
link to one peer, which then gets notes only through other members. The "check" op {restart}
runs one bounded step of verifying the store (damage found is fetched again from peers).

What waits for a client is bounded in bytes, not only in messages. A reply of
`local_track_from` bytes or more is handed to ZeroMQ without a copy and tracked until ZeroMQ
lets it go (written to the kernel, or dropped with its connection); smaller ones are copied
and bounded by the socket's SNDHWM. A request from a client whose tracked replies exceed
`local_client_bytes` (or from a client with more than one reply unread while all clients
together exceed `local_total_bytes`) is dropped unanswered and counted: a client that never
reads costs at most about one budget plus one reply, and a client that reads what it asked is
never refused (a reply it has just read may still count as held: one reply never refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import cbor2
import zmq
import zmq.asyncio

from ..appnote import app_of
from ..endpoints import tcp_parts
from ..errors import LocalError
from ..held import Held
from ..node import Node
from ..quietlog import QuietLog
from ..store import Note
from ..wire import body_size
from . import protocol
from .protocol import Map, decode, int_field, note_map, one_line

log = logging.getLogger("zflood.local")

# plain ints: enum arithmetic costs more than the send itself
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class Outbox:
    """Reply bytes ZeroMQ still holds, per control client (its ROUTER routing id), and whether
    a client's next request is answered."""

    def __init__(self, per_client: int, total: int, reply: int) -> None:
        self.per_client = per_client
        self.total = total
        self.reply = reply  # the largest reply
        self._held: Held[bytes] = Held()

    def held(self, client: bytes) -> int:
        """Bytes of replies to `client` that ZeroMQ has not let go yet."""
        return self._held.held(client)

    def queued(self) -> int:
        """Bytes held for all clients together."""
        return self._held.total()

    @property
    def clients(self) -> int:
        """Clients with replies held."""
        return len(self._held)

    def admits(self, client: bytes, pending: int) -> bool:
        """Whether a request from `client` is served, with `pending` reply bytes of this burst
        not handed to ZeroMQ yet."""
        held = self.held(client) + pending
        # A client that asks again may well have read the last reply already: ZeroMQ lets go
        # of it, but the tracker hears so a little later. Up to one reply is no evidence.
        if held <= self.reply:
            return True
        if held >= self.per_client:
            return False
        return (self._held.last_sum + pending < self.total
                or self.queued() + pending < self.total)

    def sent(self, client: bytes, tracker: zmq.MessageTracker, size: int) -> None:
        self._held.add(client, tracker, size)


class LocalAPI:
    """Serves the local API for one node; see the module docstring."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        node: Node,
        *,
        pub: list[str],
        control: list[str],
        status: Callable[[], dict[str, Any]],
        link: Callable[[bytes, bool], None] | None = None,
        check: Callable[[bool], dict[str, Any]] | None = None,
    ) -> None:
        for endpoint in [*pub, *control]:
            _check_endpoint(endpoint)
        self._ctx = ctx
        self._node = node
        self._want_pub = list(pub)
        self._want_control = list(control)
        self._status = status
        self._link = link
        self._check = check
        self._pub: zmq.asyncio.Socket | None = None
        self._pub_sync: zmq.Socket[bytes] | None = None
        self._control: zmq.asyncio.Socket | None = None
        self._pub_bound: list[str] = []
        self._topics: set[bytes] = set()  # what subscribers asked for; empty: nobody listens
        self._control_bound: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        config = node.config
        self.outbox = Outbox(config.local_client_bytes, config.local_total_bytes,
                             config.max_frame)
        self.requests = 0  # requests read from the control socket
        self.dropped = 0  # of these, dropped unanswered: their clients left too much unread
        self._quiet = QuietLog(log)

    def stats(self) -> dict[str, int]:
        """What waits for control clients: clients with replies unread, their bytes, requests
        read so far, and of these the ones dropped because their clients did not read."""
        queued = self.outbox.queued()  # first: it lets go of what ZeroMQ freed
        return {"clients": self.outbox.clients, "queued_bytes": queued,
                "requests": self.requests, "dropped_requests": self.dropped}

    async def start(self) -> None:
        """Bind both sockets, subscribe to the node and start serving requests."""
        if self._pub is not None or self._closed:
            raise LocalError("this LocalAPI was started already")
        # An XPUB is a PUB to every SUB, and it also tells us what they subscribed to: with
        # nobody listening (the usual case, and every bulk sync) a note costs nothing here.
        pub = self._pub = self._ctx.socket(zmq.XPUB)
        # It is used only from the node's handler, a plain function: a synchronous shadow
        # whose sends never block (XPUB drops instead) needs no future per note.
        self._pub_sync = zmq.Socket.shadow(pub.underlying)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self._node.config.local_pub_hwm)
        pub.setsockopt(zmq.MAXMSGSIZE, self._node.config.local_pub_maxmsgsize)
        control = self._control = self._ctx.socket(zmq.ROUTER)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.MAXMSGSIZE, self._node.config.max_frame)
        try:
            # recorded one by one, so a failure still unlinks what was bound before it
            for e in self._want_pub:
                self._pub_bound.append(_bind(pub, e))
            for e in self._want_control:
                self._control_bound.append(_bind(control, e))
            self._unsubscribe = self._node.subscribe(self._on_note, start=self._node.count)
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.create_task(self._serve(control), name="zflood-local-control")
        self._watcher = asyncio.create_task(self._watch_subscriptions(pub), name="zflood-xpub")

    @property
    def pub_endpoints(self) -> list[str]:
        return list(self._pub_bound)

    @property
    def control_endpoints(self) -> list[str]:
        return list(self._control_bound)

    async def close(self) -> None:
        """Stop serving, close both sockets and remove their ipc files. Idempotent."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watcher = None
        for sock in (self._pub, self._control):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._control = self._pub_sync = None
        for endpoint in [*self._pub_bound, *self._control_bound]:
            if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
                # ZeroMQ unlinks it too, but later, from its I/O thread
                with contextlib.suppress(OSError):
                    os.unlink(endpoint[len("ipc://") :])
        self._pub_bound, self._control_bound = [], []

    # -- PUB -----------------------------------------------------------------------------------
    def _on_note(self, note: Note) -> None:
        pub = self._pub_sync
        if pub is None or not self._topics:
            return
        app = app_of(note.body)
        topic = protocol.topic(app)
        if not any(topic.startswith(t) for t in self._topics):
            return  # ZeroMQ would drop it for every subscriber: skip the work
        data = note_map(note)
        if app is not None:
            data["app"], data["prev"] = app, self._node.app_before(app, note.index)
        try:
            pub.send(topic, _SNDMORE_NOBLOCK)
            pub.send(cbor2.dumps(data), _NOBLOCK)
        except zmq.ZMQError as e:  # a lost PUB message is repaired by readers
            log.debug("note %d not sent on PUB: %s", note.index, e)

    def _subscription(self, msg: bytes) -> None:
        """XPUB passes a topic's first subscription (b"\x01" + topic) and, when its last
        subscriber leaves, its unsubscription (b"\x00" + topic)."""
        if msg[:1] == b"\x01":
            self._topics.add(msg[1:])
        elif msg[:1] == b"\x00":
            self._topics.discard(msg[1:])

    async def _watch_subscriptions(self, pub: zmq.asyncio.Socket) -> None:
        while True:
            self._subscription(await pub.recv())

    def refresh(self) -> None:
        """Take in subscription changes now. Sends through the synchronous shadow can take
        the wake-up the watcher waits for; the daemon calls this from its timer."""
        self._quiet.flush(asyncio.get_running_loop().time())
        pub = self._pub_sync
        while pub is not None:
            try:
                self._subscription(pub.recv(_NOBLOCK))
            except zmq.Again:
                return

    # -- control -------------------------------------------------------------------------------
    async def _serve(self, control: zmq.asyncio.Socket) -> None:
        # Wait on the asyncio socket, then drain through a synchronous shadow of it: reading
        # until EAGAIN is what re-arms ZeroMQ's edge-triggered descriptor.
        sock: zmq.Socket[bytes] = zmq.Socket.shadow(control.underlying)
        track_from = sock.copy_threshold = self._node.config.local_track_from
        loop = asyncio.get_running_loop()
        while True:
            try:
                await control.poll()
            except zmq.ZMQError as e:  # the context went away under us: nothing to serve
                log.warning("local control socket stopped: %s", e)
                return
            replies: list[list[bytes]] = []
            pending: dict[bytes, int] = {}  # reply bytes of this burst, by client
            with self._node.batch():
                for _ in range(self._node.config.local_burst):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.requests += 1
                    client = frames[0]
                    if not self.outbox.admits(client, pending.get(client, 0)):
                        self._refuse(loop.time(), client, pending.get(client, 0))
                        continue
                    reply = self._answer(frames)
                    if reply is not None:
                        replies.append(reply)
                        pending[client] = pending.get(client, 0) + len(reply[-1])
            # Replies go after the batch has pushed new notes to peers: they wait for nothing.
            for reply in replies:
                try:
                    # ROUTER drops a reply to a peer that left or whose queue is full
                    tracker = sock.send_multipart(reply, zmq.NOBLOCK, copy=False, track=True)
                except zmq.ZMQError as e:
                    log.debug("local API: reply not sent: %s", e)
                    continue
                if tracker is not None and len(reply[-1]) >= track_from:
                    self.outbox.sent(reply[0], tracker, len(reply[-1]))
            await asyncio.sleep(0)  # a full burst must not starve the rest of the loop

    def _refuse(self, now: float, client: bytes, pending: int) -> None:
        self.dropped += 1
        self._quiet.fault(
            now, "unread replies", client.hex(),
            "local API: a client leaves %d bytes of replies unread; its requests are dropped"
            " until it reads them", self.outbox.held(client) + pending)

    def _answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one request (its envelope, then the CBOR map), or None."""
        if len(frames) < 2:
            return None  # a ROUTER always puts the peer's id first: nothing to answer
        req: Any = None
        try:
            req = decode(frames[-1])
            reply = self._handle(req)
        except LocalError as e:
            reply = {"ok": False, "error": one_line(str(e))}
        except Exception as e:  # a bug or a failing disk: answer, keep serving
            log.exception("local API: error handling a request")
            reply = {"ok": False, "error": one_line(f"internal error: {type(e).__name__}: {e}")}
        if isinstance(req, dict) and type(req.get("id")) in (int, str, bytes):
            reply["id"] = req["id"]
        try:
            data = cbor2.dumps(reply)
        except Exception as e:  # e.g. a status value CBOR cannot carry
            log.exception("local API: cannot encode a reply")
            data = cbor2.dumps({"ok": False, "error": one_line(f"cannot encode the reply: {e}"),
                                **({"id": reply["id"]} if "id" in reply else {})})
        return [*frames[:-1], data]

    def _handle(self, req: Any) -> Map:
        if not isinstance(req, dict):
            raise LocalError("a request is a CBOR map")
        op = req.get("op")
        if op == "publish":
            body = req.get("body")
            if not isinstance(body, str | bytes):
                raise LocalError("publish takes a \"body\" that is text or bytes")
            return {"ok": True, "note": note_map(self._node.publish(body))}
        if op == "status":
            return {"ok": True, "status": self._status()}
        if op == "read":
            start = int_field(req, "start", 0, 0)
            most = self._node.config.local_read_limit
            limit = min(int_field(req, "limit", most, 1), most)
            app = req.get("app")
            if app is not None and not isinstance(app, str):
                raise LocalError("read takes an \"app\" that is text")
            count = self._node.count  # before the read: "next" never claims what came later
            found: Iterable[Note]
            if app is None:
                found, scanned = self._node.notes(start, start + limit), start
            else:
                found, scanned = self._node.app_notes(app, start, limit)
            notes: list[Map] = []
            size, budget = 0, self._node.config.max_frame
            for note in found:
                size += body_size(note.body) + protocol.NOTE_OVERHEAD
                if notes and size > budget:  # the reply must stay a sane size
                    scanned = note.index
                    break
                notes.append(note_map(note))
            else:
                if app is None:  # all of the range was read: what it lacks is not shown
                    scanned = start + limit  # here (or is damaged: "missing" names those)
            nxt = min(scanned, max(count, start))
            reply = {"ok": True, "notes": notes, "next": nxt, "count": count}
            missing = self._node.missing(start, nxt)
            if missing:  # damaged here, skipped: they come on PUB once repaired
                reply["missing"] = missing
            return reply
        if op == "link" and self._link is not None:
            node, up = req.get("node"), req.get("up")
            if not isinstance(node, bytes) or len(node) != 32 or not isinstance(up, bool):
                raise LocalError("link takes a 32-byte \"node\" and \"up\": true or false")
            self._link(node, up)
            return {"ok": True}
        if op == "check" and self._check is not None:
            restart = req.get("restart", False)
            if not isinstance(restart, bool):
                raise LocalError("check takes \"restart\": true or false")
            return {"ok": True, **self._check(restart)}
        raise LocalError(f"unknown op {op!r}: expected publish, status, read, link or check")


def _check_endpoint(endpoint: str) -> None:
    """Only this machine may reach the local API: it can publish as this node."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return
    if not endpoint.startswith("tcp://"):
        raise LocalError(f"a local endpoint is ipc:// or tcp:// on loopback, not {endpoint!r}")
    parts = tcp_parts(endpoint)
    if parts is None:
        raise LocalError(f"{endpoint!r} is not tcp://HOST:PORT")
    host = parts[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LocalError(f"a local tcp endpoint must be on loopback, not {endpoint!r}")


def _bind(sock: zmq.Socket[Any], endpoint: str) -> str:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        raise LocalError(f"cannot bind {endpoint}: {e}") from None
    bound = sock.getsockopt(zmq.LAST_ENDPOINT)
    return bound.decode() if isinstance(bound, bytes) else str(bound)
