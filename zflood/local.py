"""The local API: a PUB socket of delivered notes, a control socket, and `Client` for apps.

Theory of operation. `LocalAPI` lives on the daemon's asyncio loop beside the engine. It
subscribes to the node for new notes only (`start=node.count`) and sends each one, as it is
delivered, on a PUB socket as [b"note", CBOR map] (see `note_map`). PUB never blocks: a slow
subscriber loses messages once its queue is full, by design. The store is the truth, and every
note carries its local arrival `index`, so a reader that sees a jump in indices (or suspects a
loss) reads what it missed through the control socket.

The control socket is a ROUTER; a request is one CBOR map, the reply one CBOR map echoing the
request's "id" (so a DEALER client can tell a stale reply from its own). Frames in front of the
request (a REQ client's empty delimiter, a proxy's routing ids) are returned as they came.
Each time the socket is readable every pending request is handled inside one `node.batch()`,
so a burst of publishes costs one signature and one frame per peer. ZMQ_MAXMSGSIZE drops a
request larger than a frame before it is parsed (ZeroMQ then cuts that connection; `Client`
refuses to send one); anything else that is wrong gets {"ok": false, "error": "..."}.
Ops: "publish" {body}, "status", "read" {start, limit}, and "link" {node, up}: cut (up false)
or heal the daemon's link to one peer, which then gets notes only through other members.

`Client.follow(start)` turns this into a gapless stream: it subscribes first, then reads the
store from `start` until caught up, then takes live notes in index order. A live note past the
next expected index means PUB dropped some: they are read from the store first. A live note
below it is a duplicate of what was read. Drops at the end of a burst, and notes sent before
the subscription took effect, leave no later note to reveal them, so an idle follower also
reads the store every `RESYNC` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Any

import cbor2
import zmq
import zmq.asyncio

from .config import DEFAULT
from .endpoints import tcp_parts
from .errors import LocalError
from .node import Node
from .store import Note
from .wire import body_size

log = logging.getLogger("zflood.local")

TOPIC = b"note"
# plain ints: enum arithmetic costs more than the send itself
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
#: Notes queued towards one PUB subscriber before ZeroMQ drops (readers repair from the store).
PUB_SNDHWM = 10_000
#: A SUB in `Client.follow` buffers this many; it reads the store for whatever PUB dropped.
SUB_RCVHWM = 10_000
#: Most notes a "read" returns at once, whatever limit is asked.
READ_LIMIT = 1000
#: Most requests handled in one burst, so a flood of requests cannot starve the loop.
BURST = 1000
#: An idle follower reads the store this often, to catch notes PUB dropped at a burst's tail.
RESYNC = 1.0
#: Live notes a follower holds while it reads a gap from the store; more are read again later.
MAX_AHEAD = 10_000
#: A subscriber sends only subscriptions: nothing legitimate comes near this.
_PUB_MAXMSGSIZE = 4096

Map = dict[str, Any]


class DaemonUnavailable(LocalError):
    """The daemon's control socket did not answer in time."""


def note_map(note: Note) -> Map:
    """A note as the CBOR map sent on PUB and in replies."""
    return {
        "origin": note.origin,
        "seqno": note.seqno,
        "body": note.body,
        "index": note.index,
        "id": note.id,
    }


def ipc_endpoints(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """The default (pub, control) endpoints in a runtime or state directory."""
    d = os.path.abspath(os.fspath(directory))
    return f"ipc://{d}/pub.sock", f"ipc://{d}/control.sock"


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
    ) -> None:
        for endpoint in [*pub, *control]:
            _check_endpoint(endpoint)
        self._ctx = ctx
        self._node = node
        self._want_pub = list(pub)
        self._want_control = list(control)
        self._status = status
        self._link = link
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
        pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        pub.setsockopt(zmq.MAXMSGSIZE, _PUB_MAXMSGSIZE)
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
        try:
            pub.send(TOPIC, _SNDMORE_NOBLOCK)
            pub.send(cbor2.dumps(note_map(note)), _NOBLOCK)
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
        while True:
            try:
                await control.poll()
            except zmq.ZMQError as e:  # the context went away under us: nothing to serve
                log.warning("local control socket stopped: %s", e)
                return
            replies: list[list[bytes]] = []
            with self._node.batch():
                for _ in range(BURST):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = self._answer(frames)
                    if reply is not None:
                        replies.append(reply)
            # Replies go after the batch has pushed new notes to peers: they wait for nothing.
            for reply in replies:
                try:
                    # ROUTER drops a reply to a peer that left or whose queue is full
                    sock.send_multipart(reply, zmq.NOBLOCK)
                except zmq.ZMQError as e:
                    log.debug("local API: reply not sent: %s", e)
            await asyncio.sleep(0)  # a full burst must not starve the rest of the loop

    def _answer(self, frames: list[bytes]) -> list[bytes] | None:
        """The reply to one request (its envelope, then the CBOR map), or None."""
        if len(frames) < 2:
            return None  # a ROUTER always puts the peer's id first: nothing to answer
        req: Any = None
        try:
            req = _decode(frames[-1])
            reply = self._handle(req)
        except LocalError as e:
            reply = {"ok": False, "error": _line(str(e))}
        except Exception as e:  # a bug or a failing disk: answer, keep serving
            log.exception("local API: error handling a request")
            reply = {"ok": False, "error": _line(f"internal error: {type(e).__name__}: {e}")}
        if isinstance(req, dict) and type(req.get("id")) in (int, str, bytes):
            reply["id"] = req["id"]
        try:
            data = cbor2.dumps(reply)
        except Exception as e:  # e.g. a status value CBOR cannot carry
            log.exception("local API: cannot encode a reply")
            data = cbor2.dumps({"ok": False, "error": _line(f"cannot encode the reply: {e}"),
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
            start = _int(req, "start", 0, 0)
            limit = min(_int(req, "limit", READ_LIMIT, 1), READ_LIMIT)
            notes: list[Map] = []
            size, budget = 0, self._node.config.max_frame
            nxt = start
            for note in self._node.notes(start, start + limit):
                size += body_size(note.body) + 128
                if notes and size > budget:  # the reply must stay a sane size
                    break
                notes.append(note_map(note))
                nxt = note.index + 1
            return {"ok": True, "notes": notes, "next": nxt, "count": self._node.count}
        if op == "link" and self._link is not None:
            node, up = req.get("node"), req.get("up")
            if not isinstance(node, bytes) or len(node) != 32 or not isinstance(up, bool):
                raise LocalError("link takes a 32-byte \"node\" and \"up\": true or false")
            self._link(node, up)
            return {"ok": True}
        raise LocalError(f"unknown op {op!r}: expected publish, status, read or link")


class Client:
    """A synchronous client of the local API (plain zmq), for the CLI and for apps.

    Not thread-safe: use one per thread."""

    def __init__(self, control: str, pub: str | None = None, *, timeout: float = 5.0) -> None:
        if pub is None and control.startswith("ipc://") and control.endswith("/control.sock"):
            pub = control[: -len("control.sock")] + "pub.sock"  # the daemon's default layout
        self.control = control
        self.pub = pub
        self.timeout = timeout
        self._ctx = zmq.Context()
        self._dealer: zmq.Socket[bytes] | None = None
        self._subs: set[zmq.Socket[bytes]] = set()
        self._ids = itertools.count(random.randrange(1 << 30))

    def publish(self, body: str | bytes) -> Map:
        """Publish a note; returns its map (see `note_map`) once it is durable."""
        note: Map = self._request({"op": "publish", "body": body})["note"]
        return note

    def status(self) -> Map:
        status: Map = self._request({"op": "status"})["status"]
        return status

    def cut(self, node: bytes | str) -> None:
        """Have the daemon keep no link with `node` (bytes or hex) until `heal(node)`."""
        self._request({"op": "link", "node": _node_id(node), "up": False})

    def heal(self, node: bytes | str) -> None:
        """Undo `cut(node)`: the daemon links with `node` again when it can."""
        self._request({"op": "link", "node": _node_id(node), "up": True})

    def read(self, start: int = 0, limit: int = READ_LIMIT) -> tuple[list[Map], int]:
        """Held notes from local index `start`, at most `limit`: (notes, next index)."""
        reply = self._request({"op": "read", "start": start, "limit": limit})
        notes, nxt = reply.get("notes"), reply.get("next")
        if not isinstance(notes, list) or type(nxt) is not int:
            raise LocalError("the daemon sent a malformed read reply")
        return notes, nxt

    def follow(
        self, start: int = 0, *, timeout: float | None = None
    ) -> Generator[Map, None, None]:
        """Every note with index >= `start`, in index order, each once, history then live.
        Stops after `timeout` seconds without a new note (None: never)."""
        if self.pub is None:
            raise LocalError("following needs the daemon's PUB endpoint")
        sub: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._subs.add(sub)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
            sub.connect(self.pub)
            yield from self._follow(sub, start, timeout)
        finally:
            self._subs.discard(sub)
            sub.close(linger=0)

    def _follow(self, sub: zmq.Socket[bytes], start: int, timeout: float | None) -> Iterator[Map]:
        expected = start
        ahead: dict[int, Map] = {}  # live notes past `expected`, by index
        last_new = check_at = time.monotonic()  # check at once: that reads the history
        while True:
            while sub.poll(0):
                note = _live(sub.recv_multipart())
                if note is not None and note["index"] >= expected and len(ahead) < MAX_AHEAD:
                    ahead[note["index"]] = note
            while expected in ahead:
                yield ahead.pop(expected)
                expected += 1
                last_new = time.monotonic()
            now = time.monotonic()
            expired = timeout is not None and now >= last_new + timeout
            if ahead or expired or now >= check_at:
                notes, _ = self.read(expected)
                check_at = time.monotonic() + RESYNC
                for note in notes:
                    yield note
                    expected = note["index"] + 1
                for i in [i for i in ahead if i < expected]:
                    del ahead[i]
                if notes:
                    last_new = time.monotonic()
                    continue  # maybe more to read; live notes were buffering meanwhile
                # The store holds nothing past `expected`, so these came from another store
                # (the daemon was reset): waiting for them to be filled would never end.
                ahead.clear()
                if expired:
                    return
                now = time.monotonic()
            wait = check_at - now
            if timeout is not None:
                wait = min(wait, last_new + timeout - now)
            sub.poll(max(0, int(wait * 1000) + 1))

    def close(self) -> None:
        for sock in [*self._subs, *([self._dealer] if self._dealer else [])]:
            sock.close(linger=0)
        self._subs.clear()
        self._dealer = None
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, req: Map) -> Map:
        rid = req["id"] = next(self._ids)
        data = cbor2.dumps(req)
        if len(data) > DEFAULT.max_frame:
            # the daemon's MAXMSGSIZE would cut the connection without an answer
            raise LocalError(f"request of {len(data)} bytes exceeds {DEFAULT.max_frame}")
        if self._dealer is None:
            self._dealer = self._ctx.socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.LINGER, 0)
            self._dealer.connect(self.control)
        dealer = self._dealer
        dealer.send(data)
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not dealer.poll(int(left * 1000) + 1):
                break
            try:
                reply = _decode(dealer.recv_multipart()[-1])
            except LocalError:
                continue
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue  # a reply to a request we gave up on
            if reply.get("ok") is not True:
                raise LocalError(str(reply.get("error", "the daemon refused the request")))
            return reply
        # A new socket next time: the old one may still hold this request, which must not
        # reach a daemon that starts later.
        dealer.close(linger=0)
        self._dealer = None
        raise DaemonUnavailable(
            f"no answer from the zflood daemon at {self.control} within {self.timeout:g}s"
            " (is it running?)"
        )


def _decode(data: bytes) -> Any:
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        raise LocalError("not a CBOR message") from None
    if fp.tell() != len(data):
        raise LocalError("trailing bytes after the CBOR item")
    return item


def _line(text: str, limit: int = 200) -> str:
    """An error message as one short line (it may quote what a client sent)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(req: Map, key: str, default: int, least: int) -> int:
    value = req.get(key, default)
    if type(value) is not int or value < least:
        raise LocalError(f"{key!r} must be an integer >= {least}")
    return value


def _live(frames: list[bytes]) -> Map | None:
    """A note map from a PUB message, or None for anything else."""
    if len(frames) != 2 or frames[0] != TOPIC:
        return None
    try:
        note = _decode(frames[1])
    except LocalError:
        return None
    return note if isinstance(note, dict) and type(note.get("index")) is int else None


def _node_id(node: bytes | str) -> bytes:
    try:
        raw = bytes.fromhex(node) if isinstance(node, str) else node
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LocalError(f"a node id is 32 bytes (64 hex digits), not {node!r}")
    return raw


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
