"""The local API's Python client: `Client` for the CLI and for apps, over plain (blocking) zmq.

Theory of operation. Requests go over one DEALER to the daemon's control socket, each with a
fresh "id"; a reply with another id answers a request given up on and is skipped. A request
that gets no answer in time raises `DaemonUnavailable`, and its socket is thrown away so the
request cannot reach a daemon that starts later.

`Client.follow(start)` turns PUB and "read" into a gapless stream: it subscribes first, then
reads the store from `start` until caught up, then takes live notes in index order. A live note
past the next expected index means PUB dropped some: they are read from the store first. A live
note below it is a duplicate of what was read, unless a read skipped it as damaged in the
daemon's store (the reply names it "missing"): repaired from a peer, it comes on PUB and is
yielded then, late and out of index order, once. Drops at the end of a burst, and notes sent
before the subscription took effect, leave no later note to reveal them, so an idle follower
also reads the store every `local_resync` seconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Generator, Iterator
from types import TracebackType

import cbor2
import zmq

from ..config import DEFAULT, Config
from ..errors import LocalError
from . import protocol
from .protocol import Map, decode, live_note, node_id


class DaemonUnavailable(LocalError):
    """The daemon's control socket did not answer in time."""


class Client:
    """A synchronous client of the local API (plain zmq), for the CLI and for apps.

    Not thread-safe: use one per thread."""

    def __init__(self, control: str, pub: str | None = None, *, timeout: float = 5.0,
                 config: Config = DEFAULT) -> None:
        if pub is None and control.startswith("ipc://") and control.endswith("/control.sock"):
            pub = control[: -len("control.sock")] + "pub.sock"  # the daemon's default layout
        self.control = control
        self.pub = pub
        self.timeout = timeout
        self.config = config  # the daemon's limits (max_frame) and the follower's (local_*)
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
        self._request({"op": "link", "node": node_id(node), "up": False})

    def heal(self, node: bytes | str) -> None:
        """Undo `cut(node)`: the daemon links with `node` again when it can."""
        self._request({"op": "link", "node": node_id(node), "up": True})

    def check(self, restart: bool = False) -> Map:
        """One step of the daemon's store check (from the start if `restart`): "checked",
        "total", "damaged" (origin hex -> seqnos), "integrity", "done"."""
        return self._request({"op": "check", "restart": restart})

    def read(self, start: int = 0, limit: int | None = None, *,
             app: str | None = None) -> tuple[list[Map], int]:
        """Held notes from local index `start`, at most `limit` (of `app` alone, if given):
        (notes, next index to read from)."""
        if limit is None:
            limit = self.config.local_read_limit
        req: Map = {"op": "read", "start": start, "limit": limit}
        if app is not None:
            req["app"] = app
        notes, nxt, _ = _read_reply(self._request(req))
        return notes, nxt

    def follow(
        self, start: int = 0, *, app: str | None = None, timeout: float | None = None
    ) -> Generator[Map, None, None]:
        """Every note with index >= `start` (of `app` alone, if given), in index order, each
        once, history then live (a note damaged in the daemon's store comes once it is
        repaired, out of order). Stops after `timeout` seconds without a new note (None:
        never)."""
        if self.pub is None:
            raise LocalError("following needs the daemon's PUB endpoint")
        sub: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        # reads of its own: replies in flight must not meet this client's other requests
        dealer: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self._subs.update((sub, dealer))
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.config.local_sub_hwm)
            sub.setsockopt(zmq.SUBSCRIBE, protocol.topic(app))
            sub.connect(self.pub)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(self.control)
            yield from _Follower(self, sub, dealer, start, app, timeout).run()
        finally:
            self._subs.difference_update((sub, dealer))
            sub.close(linger=0)
            dealer.close(linger=0)

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

    def _encode(self, req: Map) -> tuple[int, bytes]:
        """A request with a fresh id: (id, CBOR)."""
        rid = req["id"] = next(self._ids)
        data = cbor2.dumps(req)
        if len(data) > self.config.max_frame:
            # the daemon's MAXMSGSIZE would cut the connection without an answer
            raise LocalError(f"request of {len(data)} bytes exceeds {self.config.max_frame}")
        return rid, data

    def _unavailable(self) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"no answer from the zflood daemon at {self.control} within {self.timeout:g}s"
            " (is it running?)"
        )

    def _request(self, req: Map) -> Map:
        rid, data = self._encode(req)
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
                reply = decode(dealer.recv_multipart()[-1])
            except LocalError:
                continue
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue  # a reply to a request we gave up on
            return _checked(reply)
        # A new socket next time: the old one may still hold this request, which must not
        # reach a daemon that starts later.
        dealer.close(linger=0)
        self._dealer = None
        raise self._unavailable()


def _checked(reply: Map) -> Map:
    if reply.get("ok") is not True:
        raise LocalError(str(reply.get("error", "the daemon refused the request")))
    return reply


def _read_reply(reply: Map) -> tuple[list[Map], int, int]:
    """(notes, next index, notes the daemon holds) of a read reply."""
    notes, nxt, count = _checked(reply).get("notes"), reply.get("next"), reply.get("count")
    if not isinstance(notes, list) or type(nxt) is not int or type(count) is not int:
        raise LocalError("the daemon sent a malformed read reply")
    return notes, nxt, count


def _missing(reply: Map, start: int, end: int) -> list[int]:
    """Indices in [start, end) a read reply says it skipped (damaged in the store)."""
    missing = reply.get("missing", [])
    if not isinstance(missing, list):
        return []
    return [i for i in missing if type(i) is int and start <= i < end]


class _Follower:
    """One `Client.follow`: PUB for live notes, reads of its own for history and for gaps.

    Behind the store it keeps `local_reads_ahead` reads in flight, each for the range
    after the last one asked, so the daemon reads and encodes the next batch while this
    process decodes and yields the last (waiting for a timer between batches once made
    catching up a thousand times slower than reading). Replies and live notes may come in
    any order: a note is yielded only when its index is the one expected, a later one waits
    in `ahead` (bounded: more are read again), an earlier one is a duplicate.

    Following one app, `expected` is how far the log has been searched for its notes, and a
    live note is next when its "prev" (that app's previous note) lies below it; otherwise PUB
    dropped one, and it is read from the store. Such a read's "next" moves `expected` past
    the other apps' notes; one read is in flight at a time, from `expected`."""

    def __init__(self, client: Client, sub: zmq.Socket[bytes], dealer: zmq.Socket[bytes],
                 start: int, app: str | None, timeout: float | None) -> None:
        self.client = client
        self.sub = sub
        self.dealer = dealer
        self.app = app
        config = client.config
        self.depth = config.local_reads_ahead if app is None else 1
        self.limit = config.local_read_limit
        self.max_ahead = config.local_max_ahead
        self.resync = config.local_resync
        self.timeout = timeout
        self.expected = start
        self.ahead: dict[int, Map] = {}  # notes past `expected`, by index
        # indices a read skipped as damaged in the daemon's store (oldest first): each is
        # yielded late, out of order, once it is repaired and comes on PUB
        self.skipped: dict[int, None] = {}
        self.late: list[Map] = []
        self.order: list[int] = []  # following an app: a heap of the indices in `ahead`
        self.held: int | None = None  # notes the daemon held at its last reply
        self.asked = start  # reads in flight cover up to here
        self.inflight: deque[tuple[int, int, float]] = deque()  # (id, start, sent at)
        self.last_new = self.check_at = time.monotonic()  # at once: that reads the history
        self.poller = zmq.Poller()
        self.poller.register(sub, zmq.POLLIN)
        self.poller.register(dealer, zmq.POLLIN)

    def run(self) -> Iterator[Map]:
        while True:
            while self.sub.poll(0):
                note = live_note(self.sub.recv_multipart(), self.app)
                if note is not None:
                    self._hold(note)
            yield from self._ready()
            while self.dealer.poll(0):
                done = yield from self._reply()
                if done:
                    return
            now = time.monotonic()
            self._ask(now)
            if self.sub.poll(0) or self.dealer.poll(0):
                continue
            if self.inflight:
                wait = self.inflight[0][2] + self.client.timeout - now
                if wait <= 0:
                    raise self.client._unavailable()
            else:
                wait = self.check_at - now
                if self.timeout is not None:
                    wait = min(wait, self.last_new + self.timeout - now)
            self.poller.poll(max(0, int(wait * 1000) + 1))

    def _hold(self, note: Map) -> None:
        index = note["index"]
        if index < self.expected and index in self.skipped:
            del self.skipped[index]
            self.late.append(note)
        elif index >= self.expected and len(self.ahead) < self.max_ahead:
            if self.app is not None and index not in self.ahead:
                heapq.heappush(self.order, index)
            self.ahead[index] = note

    def _ready(self) -> Iterator[Map]:
        while self.late:
            yield self.late.pop(0)
        ahead = self.ahead
        if self.app is None:
            while self.expected in ahead:
                yield ahead.pop(self.expected)
                self.expected += 1
                self.last_new = time.monotonic()
            return
        order = self.order
        while order:
            index = order[0]
            if index not in ahead:  # taken from a read reply, or let go
                heapq.heappop(order)
                continue
            if index >= self.expected and ahead[index]["prev"] >= self.expected:
                return  # one before it is missing
            heapq.heappop(order)
            note = ahead.pop(index)
            if index >= self.expected:
                yield note
                self.expected = index + 1
                self.last_new = time.monotonic()

    def _ask(self, now: float) -> None:
        """Send the reads that are due: ahead of the history while behind it; else one read
        for a gap, for the idle check, or before giving up."""
        if not self.inflight:
            self.asked = self.expected  # nothing covers what lies past it
        if self.held is not None and self.expected < self.held:  # behind the store
            while len(self.inflight) < self.depth:
                begin = max(self.asked, self.expected)
                if begin >= self.held:
                    break
                self._send(begin)
            return
        if self.inflight:
            return
        expired = self.timeout is not None and now >= self.last_new + self.timeout
        if self.ahead or expired or now >= self.check_at:
            self._send(self.expected)

    def _send(self, start: int) -> None:
        req: Map = {"op": "read", "start": start, "limit": self.limit}
        if self.app is not None:
            req["app"] = self.app
        rid, data = self.client._encode(req)
        self.dealer.send(data)
        self.inflight.append((rid, start, time.monotonic()))
        self.asked = start + self.limit

    def _reply(self) -> Generator[Map, None, bool]:
        """Take one reply off the socket and yield what it makes ready; True when the
        follower is done (it timed out and the store holds nothing new)."""
        try:
            reply = decode(self.dealer.recv_multipart()[-1])
        except LocalError:
            return False
        rid = reply.get("id") if isinstance(reply, dict) else None
        ids = [entry[0] for entry in self.inflight]
        if rid not in ids:
            return False  # not ours (any more)
        hole = self.inflight[0][0] != rid
        while self.inflight[0][0] != rid:  # dropped by the daemon: read again below
            self.inflight.popleft()
        _, start, _ = self.inflight.popleft()
        notes, nxt, self.held = _read_reply(reply)
        for index in _missing(reply, start, nxt):
            if index in self.ahead:  # repaired already, and came on PUB before this reply
                self.late.append(self.ahead.pop(index))
                continue
            self.skipped[index] = None
            if len(self.skipped) > self.max_ahead:
                del self.skipped[next(iter(self.skipped))]
        if hole or nxt < min(start + self.limit, self.held):
            self.asked = self.expected  # cut short (large notes): ask on from what is missing
        # A read from at or before `expected` holds, in order, every note of interest up to
        # its "next"; one from further on (behind a reply cut short) only fills `ahead`.
        covering = was_at = start <= self.expected
        for note in notes:
            index = note["index"]
            if index < self.expected:
                continue  # had it already
            if covering:
                self.ahead.pop(index, None)
                yield note
                self.expected = index + 1
                self.last_new = time.monotonic()
            elif self.app is None:
                self._hold(note)
        if covering and nxt > self.expected:
            self.expected = nxt  # following an app: past the other apps' notes
        if self.ahead and min(self.ahead) < self.expected:
            self.ahead = {i: n for i, n in self.ahead.items() if i >= self.expected}
        yield from self._ready()
        now = time.monotonic()
        if nxt >= self.held:
            self.check_at = now + self.resync
        if notes or not was_at:
            return False
        # The store holds nothing of interest at `expected`, so what waits ahead came from
        # another store (the daemon was reset): waiting for it to be filled would never end.
        self.ahead.clear()
        self.order.clear()
        return self.timeout is not None and now >= self.last_new + self.timeout
