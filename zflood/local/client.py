"""The local API's Python client: `Client` for the CLI and for apps, over plain (blocking) zmq.

Theory of operation. Requests go over one DEALER to the daemon's control socket, each with a
fresh "id"; a reply with another id answers a request given up on and is skipped. A request
that gets no answer in time raises `DaemonUnavailable`, and its socket is thrown away so the
request cannot reach a daemon that starts later.

`Client.follow(start)` turns PUB and "read" into a gapless stream: it subscribes first, then
reads the store from `start` until caught up, then takes live notes in index order. A live note
past the next expected index means PUB dropped some: they are read from the store first. A live
note below it is a duplicate of what was read. Drops at the end of a burst, and notes sent
before the subscription took effect, leave no later note to reveal them, so an idle follower
also reads the store every `protocol.RESYNC` seconds.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Generator, Iterator
from types import TracebackType

import cbor2
import zmq

from ..config import DEFAULT
from ..errors import LocalError
from . import protocol
from .protocol import Map, decode, live_note, node_id


class DaemonUnavailable(LocalError):
    """The daemon's control socket did not answer in time."""


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
        self._request({"op": "link", "node": node_id(node), "up": False})

    def heal(self, node: bytes | str) -> None:
        """Undo `cut(node)`: the daemon links with `node` again when it can."""
        self._request({"op": "link", "node": node_id(node), "up": True})

    def read(self, start: int = 0, limit: int = protocol.READ_LIMIT) -> tuple[list[Map], int]:
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
            sub.setsockopt(zmq.RCVHWM, protocol.SUB_RCVHWM)
            sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC)
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
                note = live_note(sub.recv_multipart())
                if note is None or note["index"] < expected:
                    continue
                if len(ahead) < protocol.MAX_AHEAD:
                    ahead[note["index"]] = note
            while expected in ahead:
                yield ahead.pop(expected)
                expected += 1
                last_new = time.monotonic()
            now = time.monotonic()
            expired = timeout is not None and now >= last_new + timeout
            if ahead or expired or now >= check_at:
                notes, _ = self.read(expected)
                check_at = time.monotonic() + protocol.RESYNC
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
                reply = decode(dealer.recv_multipart()[-1])
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
