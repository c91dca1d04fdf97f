"""The protocol engine: signed per-origin logs flooded over Channels. No I/O, no clock.

Theory of operation. Every node holds, for each origin, a prefix of that origin's log; its
"heads" say how long each prefix is. On a new channel both sides send a HELLO with their heads
(O(origins), never O(history)) and each pulls what it lacks with WANT [start, end); the answer
is NOTES batches, each closed by the origin's signature over the last note's id, which vouches
for the whole hash chain behind it. So the receiver hashes every note but verifies one
signature a batch.

New notes spread two ways. An origin pushes its own new note straight to each peer that is
up to date (one hop). A node that accepted notes of someone else announces its new head with
HEADS, except to peers that hold it already or are linked to that origin directly (they get
the push; LINKS tells who is linked to whom). A node pulls each missing range from one peer at
a time (the origin itself when linked, else the peer with most), pipelining up to
`window_batches` batches. Over a lossless channel this converges with no timer at all.

Channels may drop frames without closing. `tick(now)` repairs that: it resends a HELLO the peer
has not acknowledged, sends every peer the full heads every `sync_interval` (a lost HEADS or
push is then noticed), and asks another peer for a range that made no progress within
`request_timeout`. A gap in a batch stream (a lost NOTES) is re-asked at once.

Bounded cost. Whatever a peer sends, what it makes us spend is bounded per peer. Heads go out
in pages of `heads_page` origins (HELLO, then HEADS frames), so however many origins a group
holds no message outgrows what peers accept; a node holds at most `max_origins` origins. A
WANT does not send anything itself: it queues a range on that peer's serve queue, and a range
already queued or sent to that peer is not queued again, unless the peer shows it lost it (a
gap re-ask names the start of a batch we sent, or it asks again after `request_timeout`). The
queue is served in steps of `serve_step` bytes or `serve_frames` batches per peer: one step
at the end of each batch of work, the rest when the driver calls `serve()` (it sets `wake` to
hear that work waits), so its event loop gets a turn between steps. A peer whose channel still
holds `peer_backlog` bytes we sent (a channel may say, as `backlog`) is served no more until
it reads them: what one peer keeps queued is bounded in bytes, not only in frames.
Origins a peer claims that we hold nothing of are remembered up to `claims_per_peer`, and
asked of it at most `new_origin_window` at a time; a claim it does not deliver within
`request_timeout` is forgotten and halves that window.
Repeated faults are logged once per peer through `QuietLog`, then counted.

Forks (two validly signed chains of one origin) are found when a run does not link to ours
(then the notes before it are asked, one, then twice as many, until they do) or differs
from ours where both hold notes; `log.py` decides which branch is kept and how the origin
heals. A member that changed branch tells its peers its count at once, and a peer whose count
of a forked origin goes back has what we took it to hold, and sent it, forgotten.

Inside `with node.batch():` pushes of own notes and verification of received notes are
coalesced: one signature and one frame for a run of publishes, one verify and one transaction
for a run of received pushes. A driver wraps each burst of work in it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2

from . import wire
from .config import DEFAULT, Config
from .errors import (
    ConfigurationError,
    LocalError,
    NodeClosed,
    NoIdentity,
    RemoteProtocolError,
    StoreDamaged,
    StoreError,
)
from .identity import GENESIS, ID_SIZE, SigningKey, note_id, verify
from .log import AGAIN_PREFIX, Log, Shown, again, kept
from .quietlog import QuietLog
from .store import Again, Body, CheckProgress, Fork, Note, Row, Store

log = logging.getLogger("zflood.node")

Handler = Callable[[Note], None]


class Channel(Protocol):
    """The seed's channel, carrying bytes. Callbacks are set once; frames received before
    `on_receive` wait for it; `on_close` fires at once on a channel that is already closed."""

    def send(self, frame: bytes) -> None: ...
    def on_receive(self, callback: Callable[[bytes], None]) -> None: ...
    def on_close(self, callback: Callable[[], None]) -> None: ...
    def close(self) -> None: ...


def _backlog(channel: Channel) -> int:
    """A channel may carry `backlog`, the bytes it still holds unsent (the mesh's links do);
    notes are not served to a peer whose channel holds `peer_backlog` of them."""
    held = getattr(channel, "backlog", 0)
    return held if isinstance(held, int) else 0


def _authenticated(channel: Channel) -> bytes | None:
    """A channel may carry `node`, the peer's id as its transport authenticated it (the mesh's
    CurveZMQ links do); then a hello naming any other node closes the channel."""
    node = getattr(channel, "node", None)
    return node if isinstance(node, bytes) else None


@dataclass
class Stats:
    """Counters a test or `status` can read; they never drive behaviour."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bodies_in: int = 0  # note bodies received, duplicates included
    duplicates: int = 0  # bodies received that were held already
    accepted: int = 0  # notes from peers that were new
    published: int = 0
    signatures: int = 0
    verifies: int = 0
    channels_closed_on_error: int = 0
    backlog_waits: int = 0  # serve steps that stopped: the peer's channel held peer_backlog
    wants_refused: int = 0  # WANTs for ranges already queued or sent to that peer
    wants_reserved: int = 0  # re-asks served again: the peer showed it lost what we sent
    wants_overflow: int = 0  # WANTs refused because that peer's serve queue was full
    origins_refused: int = 0  # new origins refused: max_origins held
    claims_dropped: int = 0  # claims of unknown origins past a peer's claims_per_peer
    claims_unanswered: int = 0  # claims asked for and not delivered within request_timeout


@dataclass(eq=False)
class _Peer:
    channel: Channel
    node: bytes | None = None  # from its hello
    authenticated: bytes | None = None  # what the channel vouches for, if it can
    ready: bool = False  # its hello arrived
    acked: bool = False  # it has seen our hello
    closed: bool = False
    prompted: bool = False  # we asked it to resend its hello
    heads: dict[bytes, int] = field(default_factory=dict)  # what we know it holds
    told: dict[bytes, int] = field(default_factory=dict)  # what it said or showed it holds
    announced: dict[bytes, int] = field(default_factory=dict)  # what we told it we hold
    links: frozenset[bytes] = frozenset()  # origins it is linked to directly
    walking: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # origin -> asked
    shown: set[tuple[bytes, int]] = field(default_factory=set)  # forks we showed it our side of
    slow: dict[bytes, float] = field(default_factory=dict)  # origin -> avoid asking until
    hello_at: float | None = None
    sync_at: float | None = None
    # serving it: origin -> ranges still to send, taken in turn; and how many notes they hold
    queue: dict[bytes, list[_Range]] = field(default_factory=dict)
    queued: int = 0
    sent: dict[bytes, _Sent] = field(default_factory=dict)  # origin -> what it has on its way
    # pulling from it: origins it claims that we hold nothing of (in order), those of them not
    # asked yet because the window was full, and those asked
    claims: dict[bytes, None] = field(default_factory=dict)
    waiting: dict[bytes, None] = field(default_factory=dict)
    asking: set[bytes] = field(default_factory=set)
    window: int = 1  # how many new origins it may be asked for at once
    # handing it back its notes off the chain here (it is their origin): the runs still to go
    handing: Iterator[wire.Notes] | None = None


@dataclass
class _Range:
    pos: int
    end: int
    prev: bytes | None = None  # id of the note before pos, once known


@dataclass
class _Sent:
    """What of one origin went to one peer, so that asking again costs nothing."""

    begin: int = 0  # queued or sent from here (where it first asked from)...
    end: int = 0  # ... up to here
    at: float | None = None  # when we last took a WANT for it
    reask: int = -1  # where the last re-ask we served again (or the stream) started
    starts: deque[int] = field(default_factory=deque)  # starts of batches recently sent
    walked_at: float | None = None  # when it last walked back along a forked chain


@dataclass(eq=False)
class _Request:
    peer: _Peer
    start: int  # our count when this stream of WANTs (re)started
    end: int  # asked up to here (exclusive)
    progress_at: float | None


@dataclass
class _Run:
    """Received notes of one origin from one peer, waiting for the end of a batch."""

    start: int
    prev: bytes
    bodies: list[Body]
    sig: bytes
    size: int


class Node:
    """A member of a flooding group. See the module docstring for how it works."""

    def __init__(
        self,
        pickled: bytes | None = None,
        *,
        path: str | None = None,
        group: bytes = b"",
        config: Config = DEFAULT,
        fsync: bool = False,
        create: bool = True,
    ) -> None:
        """`create=False` refuses a store that holds no identity (emptied or removed) instead
        of starting a new one in it."""
        if pickled is not None and path is not None:
            raise LocalError("give either a pickle or a path, not both")
        self.config = config
        self.stats = Stats()
        self._store = Store(path, fsync=fsync, wal_bytes=config.wal_bytes,
                            wal_min=config.wal_min)
        self._log = Log(self._store)  # the one place that knows each origin's count and head
        if pickled is not None:
            seed, group, origins = _unpickle(pickled)
            self._key = SigningKey(seed)
            self._load(origins)
        else:
            try:
                self._key = self._identity(create)
            except BaseException:
                self._store.close()
                raise
            stored_group = self._store.get_meta("group")
            if stored_group is not None and group and stored_group != group:
                self._store.close()
                # a setup to mend by hand (group.key replaced?): under systemd, exit 78
                raise ConfigurationError("this store belongs to another group")
            group = group or (stored_group or b"")
        if group and len(group) != 16:
            raise LocalError("a group id is 16 bytes")
        if group:
            self._store.set_meta("group", group)
        self.id: bytes = self._key.public
        self.group: bytes = group
        self._own_sig: tuple[int, bytes] | None = None  # (seqno, sig) of our latest signed note
        self._peers: list[_Peer] = []
        self._requests: dict[bytes, _Request] = {}
        self._handlers: list[Handler] = []
        self._now: float | None = None
        self._depth = 0  # batch() nesting
        self._runs: dict[tuple[_Peer, bytes], _Run] = {}
        self._unpushed = False
        # (seqno, previous id, bodies) of what was published since the last push: peers that
        # were up to date get it without a read from the store
        self._fresh: tuple[int, bytes, list[Body]] | None = None
        self._pending_heads: dict[_Peer, dict[bytes, int]] = {}
        self._links_changed = False
        self._closed = False
        # our own notes off the kept chain wait to be published again (see log.py)
        self._healing = self._log.is_owed(self.id)
        self._quiet = QuietLog(log, period=config.fault_summary)
        #: Called (with no argument) when answers wait in a serve queue for `serve()`: a driver
        #: sets it to schedule a pump on its event loop.
        self.wake: Callable[[], None] | None = None
        # Our own store's faults (never a peer's): why the last write failed until one
        # succeeds, and whether asking peers is paused for it (tick retries) and since when.
        self._store_fault: str | None = None
        self._paused = False
        self._paused_at: float | None = None
        self._repair_asked: dict[bytes, tuple[_Peer | None, float | None]] = {}
        self._store.on_damage = self._on_damage

    # -- the seed's interface ----------------------------------------------------------------
    def subscribe(self, handler: Handler, start: int = 0) -> Callable[[], None]:
        """Call `handler(note)` for every note held, in arrival order, then for every new one.
        `start` skips held notes with a lower local index (`start=node.count`: new ones only).
        Returns a function that unsubscribes."""
        self._check_open()
        # Until caught up: a handler may publish while it is being replayed to.
        while start < self._store.next_index:
            stop = self._store.next_index
            for note in self._store.replay(start, stop):
                handler(note)
            start = stop
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler) if handler in self._handlers else None

    def publish(self, body: Body) -> Note:
        """Append a note to our log. It is durable when this returns."""
        return self.publish_many([body])[0]

    def publish_many(self, bodies: list[Body]) -> list[Note]:
        """Append several notes in one transaction (all or none); durable on return."""
        self._check_open()
        for body in bodies:
            if not isinstance(body, str | bytes):
                raise LocalError(f"a note body is str or bytes, not {type(body).__name__}")
            if wire.body_size(body) > self.config.max_body:
                raise LocalError(f"a note body is at most {self.config.max_body} bytes")
            if type(body) is bytes and body.startswith(AGAIN_PREFIX):
                raise LocalError("bytes bodies that begin with the CBOR tag "
                                 f"{AGAIN_PREFIX.hex()} are reserved (notes published again)")
        if not bodies:
            return []
        return self._publish(bodies)

    def _publish(self, bodies: list[Body], again: list[Again] | None = None) -> list[Note]:
        """Append our notes, checked already; `again` describes bodies published again."""
        origin = self.id
        start = seqno = self._log.count(origin)
        nid = prev = self._log.head(origin)
        rows: list[Row] = []
        for body in bodies:
            nid = note_id(origin, seqno, nid, body)
            rows.append((nid, None, body))
            seqno += 1
        try:
            index = self._store.append(origin, start, rows, again or ())
        except StoreError as e:
            self._store_failed(e)
            raise
        self._stored()
        self.stats.published += len(rows)
        if again is None:
            notes = [Note(origin, start + i, r[2], r[0], index + i) for i, r in enumerate(rows)]
            if self._handlers:
                for note in notes:
                    self._deliver(note)
        else:
            notes = []
            for i, (nid, _, _) in enumerate(rows):
                _, _, _, hidden, shown = again[i]
                note = Note(origin, start + i, shown, nid, index + i)
                notes.append(note)
                if not hidden:
                    self._deliver(note)
        if not self._unpushed:
            self._fresh = (start, prev, list(bodies))
            self._unpushed = True
        elif self._fresh is not None:
            self._fresh[2].extend(bodies)
        if self._depth == 0:
            self._push_own()
        return notes

    def connect(self, channel: Channel) -> None:
        """Start replicating over `channel`."""
        self._check_open()
        peer = _Peer(channel, authenticated=_authenticated(channel), hello_at=self._now,
                     sync_at=self._now, window=self.config.new_origin_window)
        self._peers.append(peer)
        self._send_hello(peer)
        channel.on_close(lambda: self._on_close(peer))
        channel.on_receive(lambda frame: self._receive(peer, frame))

    def pickle(self) -> bytes:
        """Identity and every held note as one portable CBOR value (`Node(pickled)` reads it)."""
        self._check_open()
        origins = {}
        for origin, count in self._log.counts().items():
            rows = self._store.read(origin, 0, count)
            if origin == self.id:  # our own chain needs no signatures: the key comes along
                origins[origin] = [[body, None] for _, _, body in rows]
            else:
                origins[origin] = [[body, sig] for _, sig, body in rows]
        state = {"v": 1, "seed": self._key.seed, "group": self.group, "origins": origins}
        return cbor2.dumps(state)

    def tick(self, now: float) -> None:
        """Let time pass: repair lost frames and re-ask quiet peers. `now` is any monotonic
        clock in seconds; the engine never reads one itself."""
        if self._closed:
            return
        self._now = now
        c = self.config
        with self.batch():
            for peer in list(self._peers):
                # timers of what happened before the first tick start now
                hello_at = peer.hello_at = now if peer.hello_at is None else peer.hello_at
                sync_at = peer.sync_at = now if peer.sync_at is None else peer.sync_at
                if not (peer.ready and peer.acked) and now - hello_at >= c.hello_retry:
                    self._send_hello(peer)
                if peer.ready and now - sync_at >= c.sync_interval:
                    peer.sync_at = now
                    self._send_pages(peer, self._heads_items(), tips=False, announce=False)
            self._tick_store(now)
            for peer in self._peers:
                if peer.handing is not None:
                    self._hand_back(peer, fresh=False)
            for origin, req in list(self._requests.items()):
                if req.progress_at is None:
                    req.progress_at = now
                elif now - req.progress_at >= c.request_timeout:
                    peer = req.peer
                    del self._requests[origin]
                    if origin in peer.asking:
                        # a claim it did not make good: forget it (its next full heads may
                        # claim it again) and ask it for fewer new origins at once
                        self.stats.claims_unanswered += 1
                        self._quiet.fault(now, "claims not delivered", _h(peer.node),
                                          "%s: %s claims origins it does not deliver (%s first)",
                                          self, _h(peer.node), _h(origin))
                        peer.window = max(1, peer.window // 2)
                        self._forget_claim(peer, origin)
                    else:
                        self._quiet.fault(now, "no progress", _h(peer.node),
                                          "%s: no progress on %s from %s; asking again", self,
                                          _h(origin), _h(peer.node), level=logging.INFO)
                        peer.slow[origin] = now + c.request_timeout
                    self._plan(origin)
            for peer in list(self._peers):
                # a request can move to another peer without passing here: recount
                peer.asking = {o for o in peer.asking if not self._log.count(o)
                               and (r := self._requests.get(o)) is not None and r.peer is peer}
                self._refill(peer)
            self._quiet.flush(now)

    def close(self) -> None:
        """Close every channel and the store. Idempotent."""
        if self._closed:
            return
        with self.batch():
            pass  # flush what a batch left pending
        self._closed = True
        for peer in list(self._peers):
            peer.closed = True
            peer.channel.close()
        self._peers.clear()
        self._store.close()

    def serve(self, budget: int | None = None) -> bool:
        """Send each peer up to `budget` bytes (default `serve_step`) of what it asked for;
        True while more waits that can go now. A driver calls this again after its event loop
        had a turn, and, while `serving` stays true after a False (what waits is for peers
        whose channels hold `peer_backlog` bytes unsent), after `backlog_poll`."""
        if self._closed:
            return False
        step = self.config.serve_step if budget is None else budget
        more = False
        for peer in list(self._peers):
            if peer.queue:
                self._serve_step(peer, step)
                more = more or (bool(peer.queue) and not self._held_back(peer))
        return more

    @property
    def serve_queued(self) -> int:
        """Notes waiting in serve queues, over all peers."""
        return sum(peer.queued for peer in self._peers)

    @property
    def serving(self) -> bool:
        """Answers wait in a serve queue: `serve()` has work."""
        return any(peer.queue for peer in self._peers)

    # -- more of the public face ---------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Coalesce the work done inside: see the module docstring."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and not self._closed:
                self._flush()

    @property
    def key(self) -> SigningKey:
        """The node's signing key; the mesh proves the node's identity with it."""
        return self._key

    @property
    def heads(self) -> dict[bytes, int]:
        """For every origin held: how many of its notes (the next seqno)."""
        return self._log.counts()

    @property
    def count(self) -> int:
        """Notes held; also the next local arrival index."""
        return self._store.next_index

    @property
    def forks(self) -> list[Fork]:
        """Proof of every fork seen: where each origin's branches split, which was kept."""
        return self._store.forks()

    def fork_report(self) -> list[dict[str, object]]:
        """Every fork as `status` shows it: the origin, the seqno where its branches split,
        the note kept there and the one dropped, how many notes are held off the chain, and
        which notes of the kept chain publish bodies of the dropped branch again."""
        out: list[dict[str, object]] = []
        for fork in self._store.forks():
            n, first, last = self._store.published_again(fork.origin, fork.seqno)
            out.append({
                "origin": fork.origin.hex(),
                "seqno": fork.seqno,
                "kept": fork.kept.hex(),
                "lost": fork.lost.hex(),
                "ours": fork.origin == self.id,
                "dropped": self._store.dropped_count(fork.origin, fork.seqno),
                "published_again": n,
                "again_seqnos": [first, last] if n else [],
                "healing": fork.origin == self.id and self._healing,
            })
        return out

    def notes(self, start: int = 0, end: int | None = None) -> Iterator[Note]:
        """Held notes by local arrival index, streamed."""
        self._check_open()
        return self._store.replay(start, end)

    def missing(self, start: int, end: int) -> list[int]:
        """Arrival indices in [start, end) of notes left out as damaged (being fetched again):
        a reader that skipped one takes it when it is repaired, delivered at that index."""
        return sorted(i for i in self._store.damaged_at.values() if start <= i < end)

    def app_notes(self, app: str, start: int = 0, limit: int = 1000) -> tuple[list[Note], int]:
        """Held notes of `app` (see `zflood.appnote`) from index `start`, at most `limit`, and
        the index below which all of them were returned; the cost follows `app`'s notes."""
        self._check_open()
        return self._store.app_notes(app, start, None, limit)

    def app_before(self, app: str, index: int) -> int:
        """The index of the last held note of `app` below `index`, or -1."""
        self._check_open()
        return self._store.app_before(app, index)

    def export(self) -> Iterator[wire.Notes]:
        """Every held note as signed batches, origin by origin: what `import_notes` takes,
        here or on another member, and checks exactly as it checks a peer's batches."""
        self._check_open()
        for origin, have in self._log.counts().items():
            yield from self._batches(origin, 0, have, have)

    def import_notes(self, batch: wire.Notes) -> int:
        """Take a batch from an export; returns how many notes were new. A batch that does
        not check out raises `LocalError`; a fork is recorded as if a peer had sent it."""
        self._check_open()
        have = self._log.count(batch.origin)
        if (
            batch.start > have or batch.prev != self._id_at(batch.origin, batch.start - 1, have)
        ) and batch.origin in self._log.forked:
            return 0  # more of a forked origin's other branch: skipped, as from a peer
        if batch.start > have:  # a peer's gap is asked again; a file's is lost for good
            raise LocalError(f"notes {have}..{batch.start - 1} of {_h(batch.origin)} are missing "
                             "before this batch")
        before = self._store.next_index
        source = _Peer(_NoChannel())
        try:
            with self.batch():
                self._accept(source, batch.origin, batch.start, batch.prev, batch.bodies,
                             batch.sig)
        except RemoteProtocolError as e:
            raise LocalError(f"bad batch of {_h(batch.origin)} at {batch.start}: {e}") from None
        return self._store.next_index - before

    def get_meta(self, key: str) -> Any:
        """A value an application layer keeps in the store beside the notes (the member
        table, say); "seed" and "group" are the engine's own."""
        return self._store.get_meta(key)

    def set_meta(self, key: str, value: Any) -> None:
        if key in ("seed", "group"):
            raise LocalError(f"meta key {key!r} is the engine's own")
        self._check_open()
        self._store.set_meta(key, value)

    def set_meta_many(self, items: dict[str, Any]) -> None:
        """`set_meta` for many keys, in one transaction."""
        if "seed" in items or "group" in items:
            raise LocalError("meta keys 'seed' and 'group' are the engine's own")
        self._check_open()
        self._store.set_meta_many(items)

    def peers(self) -> list[dict[str, object]]:
        return [
            {"node": p.node, "ready": p.ready, "heads": dict(p.heads)}
            for p in self._peers
            if not p.closed
        ]

    def __repr__(self) -> str:
        return f"Node({self.id[:4].hex()})"

    # -- receiving -----------------------------------------------------------------------------
    def _receive(self, peer: _Peer, frame: bytes) -> None:
        if peer.closed or self._closed:
            return
        self.stats.frames_in += 1
        self.stats.bytes_in += len(frame)
        try:
            with self.batch():
                msg = wire.decode(frame, self.config)
                self._handle(peer, msg)
        except RemoteProtocolError as e:
            self._drop(peer, str(e))
        except StoreError as e:  # our own disk: the peer did nothing wrong
            self._store_failed(e)
        except Exception:  # a bug must not take the caller down
            log.exception("%s: error handling a frame from %s", self, _h(peer.node))
            self._drop(peer, "internal error")

    def _handle(self, peer: _Peer, msg: wire.Message) -> None:
        if isinstance(msg, wire.Hello):
            self._on_hello(peer, msg)
            return
        if not peer.ready:
            # Its hello was lost (a link that came up on its side first, say), so this frame
            # goes unanswered. Our hello, unseen by it, makes it send its own again and re-ask.
            if not peer.prompted:
                peer.prompted = True
                self._send_hello(peer)
            return
        peer.acked = True  # it only sends this after reading our hello
        if isinstance(msg, wire.Notes):
            self._on_notes(peer, msg)
        elif isinstance(msg, wire.Want):
            self._on_want(peer, msg)
        elif isinstance(msg, wire.Heads):
            self._learn(peer, msg.heads)
            if msg.tips:  # a page following a hello
                self._compare_tips(peer, msg)
        else:
            gone = peer.links - frozenset(msg.links)
            peer.links = frozenset(msg.links)
            # we may have skipped announcing these origins to it: announce now
            for origin in gone:
                self._announce_to(peer, origin)

    def _on_hello(self, peer: _Peer, msg: wire.Hello) -> None:
        if msg.version != wire.VERSION:
            raise RemoteProtocolError(f"protocol version {msg.version}, we speak {wire.VERSION}")
        if msg.group != self.group:
            raise RemoteProtocolError("peer belongs to another group")
        if msg.node == self.id:
            raise RemoteProtocolError("connected to ourselves")
        if peer.authenticated is not None and peer.authenticated != msg.node:
            raise RemoteProtocolError(
                f"its hello names node {_h(msg.node)}, the link is {_h(peer.authenticated)}"
            )
        if peer.node is not None and peer.node != msg.node:
            raise RemoteProtocolError("peer changed its node id")
        first = not peer.ready
        peer.node = msg.node
        peer.ready = True
        peer.links = frozenset(msg.links)
        if msg.seen:
            peer.acked = True
        elif not first:
            # It has not got our hello, so it dropped what we sent since: say hello again and
            # ask again what we asked of it; what we sent it is no longer on its way.
            for origin in list(peer.queue):
                self._unqueue(peer, origin)
            peer.sent.clear()
            self._send_hello(peer)
            for origin, req in list(self._requests.items()):
                if req.peer is peer:
                    del self._requests[origin]
                    self._plan(origin)
        self._learn(peer, msg.heads)
        self._compare_tips(peer, msg)
        if first:
            # the rest of our heads, now that it will read them
            self._send_pages(peer, self._heads_items()[self.config.heads_page:], tips=True,
                             announce=True)
            self._links_changed = True
            self._unpushed = True
            if msg.node in self._log.forked:  # notes of its own it may need to publish again
                self._hand_back(peer)
            # what changed since our hello went out is announced now (our own notes are
            # pushed by _push_own at the end of this batch)
            for origin in self._log.counts():
                if origin != self.id:
                    self._announce_to(peer, origin)

    def _compare_tips(self, peer: _Peer, msg: wire.Hello | wire.Heads) -> None:
        """A peer whose chain of an origin ends differently from ours at the same seqno holds
        a fork; ask it for that note, whose signed answer is the proof."""
        for origin, tip in msg.tips.items():
            count = msg.heads.get(origin, 0)
            have = self._log.count(origin)
            if (
                0 < count <= have
                and tip != self._id_at(origin, count - 1, have)
            ):
                self._send(peer, wire.Want(origin, count - 1, count))

    def _learn(self, peer: _Peer, heads: dict[bytes, int]) -> None:
        told = peer.told
        forked = self._log.forked
        for origin, count in heads.items():
            held = self._log.count(origin)
            if not held and count > 0 and origin not in peer.claims:
                if len(peer.claims) >= self.config.claims_per_peer:
                    self.stats.claims_dropped += 1
                    self._fault("too many claims", peer, "%s: %s claims more than %d origins we "
                                "lack; ignoring the rest", self, _h(peer.node),
                                self.config.claims_per_peer)
                    continue
                if not self._room_for(origin, peer):
                    continue
                peer.claims[origin] = None
            theirs = peer.heads.get(origin, 0)
            if count > theirs:
                peer.heads[origin] = count
            elif count < theirs and (count < told.get(origin, 0) or origin in forked):
                # That origin forked and it took the other branch: what we took it to hold
                # is void. Tell it again what we hold (we may be its way to the rest).
                peer.heads[origin] = count
                peer.sent.pop(origin, None)  # what we sent it of the other branch, it dropped
                if peer.announced.get(origin, 0) > count:
                    peer.announced[origin] = count
                if origin == self.id:
                    self._unpushed = True
                else:
                    self._announce_to(peer, origin)
                req = self._requests.get(origin)
                if req is not None and req.peer is peer:
                    del self._requests[origin]  # it lacks what we asked of it
                    self._plan(origin)
            told[origin] = count
            if count > held:
                self._plan(origin)

    def _room_for(self, origin: bytes, peer: _Peer) -> bool:
        """May we take up a new origin from `peer`? Past max_origins only a linked peer's own
        (so a member that minted origins cannot lock out a new one) and our own."""
        if (self._store.origins_held < self.config.max_origins or origin == peer.node
                or origin == self.id):
            return True
        self.stats.origins_refused += 1
        self._fault("origins refused", peer, "%s: holding %d origins; refusing new ones from %s",
                    self, self._store.origins_held, _h(peer.node))
        return False

    def _forget_claim(self, peer: _Peer, origin: bytes) -> None:
        peer.claims.pop(origin, None)
        peer.waiting.pop(origin, None)
        peer.asking.discard(origin)
        peer.slow.pop(origin, None)
        if not self._log.count(origin):
            peer.heads.pop(origin, None)

    def _fault(self, kind: str, peer: _Peer, message: str, *args: object) -> None:
        # QuietLog wants a time; before the first tick there is none yet, and 0 will do
        self._quiet.fault(self._now or 0.0, kind, _h(peer.node), message, *args)

    def _on_notes(self, peer: _Peer, msg: wire.Notes) -> None:
        if not self._log.count(msg.origin) and not self._room_for(msg.origin, peer):
            return
        self.stats.bodies_in += len(msg.bodies)
        if msg.end > peer.heads.get(msg.origin, 0):
            peer.heads[msg.origin] = msg.end
        if msg.end > peer.told.get(msg.origin, 0):
            peer.told[msg.origin] = msg.end  # it showed it holds that much
        if self._paused:
            return  # we cannot store it: asked again once storing resumes
        if self._depth > 1:  # inside a driver's batch: merge runs, verify once at the end
            key = (peer, msg.origin)
            run = self._runs.get(key)
            size = sum(map(len, msg.bodies))
            if run is not None and (
                run.start + len(run.bodies) != msg.start
                or len(run.bodies) + len(msg.bodies) > self.config.batch_notes
                or run.size + size > self.config.batch_bytes
            ):
                del self._runs[key]
                self._accept(peer, msg.origin, run.start, run.prev, run.bodies, run.sig)
                run = None
            if run is None:
                self._runs[key] = _Run(msg.start, msg.prev, list(msg.bodies), msg.sig, size)
            else:
                run.bodies.extend(msg.bodies)
                run.sig = msg.sig
                run.size += size
            return
        self._accept(peer, msg.origin, msg.start, msg.prev, msg.bodies, msg.sig)

    def _accept(
        self, peer: _Peer, origin: bytes, start: int, prev: bytes,
        bodies: list[Body] | tuple[Body, ...], sig: bytes,
    ) -> None:
        """Check a signed run of `origin`'s notes and store what is new in it."""
        if peer.closed:
            return
        have = self._log.count(origin)
        end = start + len(bodies)
        if start > have:
            self._on_gap(peer, origin)
            return
        self.stats.verifies += 1
        ids = self._log.check(origin, start, prev, bodies, sig)
        if origin in self._store.damaged:
            self._repair(origin, start, prev, ids, bodies, sig, have)
        # Validly signed. Does it continue our chain? If not, the origin signed two chains.
        if prev != self._id_at(origin, start - 1, have):
            if start > 0 and prev in self._store.off_chain_ids(origin, start - 1):
                # the next run of a branch that lost (a long one comes back a run at a
                # time): off the chain too
                if self._log.keep_lost(origin, start, ids, bodies, sig):
                    self._lost_changed(origin, peer)
                return
            self._walk_back(peer, origin, start)
            return
        if start < have:
            shared = min(end, have)
            if ids[shared - 1 - start] != self._id_at(origin, shared - 1, have):
                held = self._store.read(origin, start, shared)
                if len(held) < shared - start:
                    return  # our copy is damaged there, not forked: it is being repaired
                i = next(i for i, row in enumerate(held) if row[0] != ids[i])
                self._fork(peer, origin, start + i, held[i][0], start, prev, ids, bodies, sig)
                return
            self.stats.duplicates += shared - start
            if end <= have:
                self._progress(peer, origin)
                return
        skip = have - start
        rows: list[Row] = [(ids[i], None, bodies[i]) for i in range(skip, len(bodies))]
        last = rows[-1]
        rows[-1] = (last[0], sig, last[2])
        first_index, shown = self._log.append(origin, have, rows)
        self._stored()
        self.stats.accepted += len(rows)
        self._deliver_rows(origin, have, rows, first_index, shown)
        self._progress(peer, origin)
        for other in self._peers:
            self._announce_to(other, origin)
        if origin == self.id:  # a restored copy of us caught up on its own notes
            self._unpushed = True
            self._fresh = None

    def _deliver_rows(
        self, origin: bytes, start: int, rows: list[Row], first_index: int, shown: Shown
    ) -> None:
        for i, (nid, _, body) in enumerate(rows):
            seqno = start + i
            if shown and seqno in shown:
                again_body = shown[seqno]
                if again_body is None:
                    continue  # its body was delivered here already
                body = again_body
            self._deliver(Note(origin, seqno, body, nid, first_index + i))

    def _id_at(self, origin: bytes, seqno: int, have: int) -> bytes:
        return self._log.id_at(origin, seqno)

    def _walk_back(self, peer: _Peer, origin: bytes, start: int) -> None:
        """`peer`'s chain of `origin` differs from ours before `start`: ask it for the notes
        before, until a run of them links to our chain and shows where the two split."""
        # A fork is usually a few notes back (a restored backup): ask for one note, then
        # twice as many each time the answer still does not link.
        asked = peer.walking.get(origin)
        span = 1
        if asked is not None:
            if asked == (max(0, start - 1), start) or asked[0] < start < asked[1]:
                return  # asked already, or an earlier part of the answer
            if asked[0] == start:
                span = min(2 * (asked[1] - asked[0]), self.config.batch_notes)
        low = max(0, start - span)
        peer.walking[origin] = (low, start)
        self._send(peer, wire.Want(origin, low, start))
        req = self._requests.get(origin)
        if req is not None and req.peer is peer:
            del self._requests[origin]  # its answer did not link: planned again once it does

    def _fork(
        self, peer: _Peer, origin: bytes, seqno: int, ours: bytes, start: int, prev: bytes,
        ids: list[bytes], bodies: list[Body] | tuple[Body, ...], sig: bytes,
    ) -> None:
        """`origin` signed two chains that split at `seqno`: `peer`'s run (from `start`)
        and ours. Keep the proof and the branch the rule keeps (see log.py)."""
        k = seqno - start
        theirs = ids[k]
        peer.walking.pop(origin, None)
        if self._log.add_fork(origin, seqno, ours, theirs, start, prev, bodies, sig):
            log.warning("%s: origin %s forked at seqno %d (seen from %s); keeping %s branch",
                        self, _h(origin), seqno, _h(peer.node),
                        "our" if kept(ours, theirs) == ours else "its")
        if kept(ours, theirs) == ours:
            # Theirs lost: keep it off the chain, show the peer ours from the split, and
            # know it holds nothing of ours from there.
            new = self._log.keep_lost(origin, seqno, ids[k:], bodies[k:], sig)
            if peer.heads.get(origin, 0) > seqno:
                peer.heads[origin] = seqno
            peer.sent.pop(origin, None)  # it will ask for ours from the split: serve it
            if (origin, seqno) not in peer.shown:
                peer.shown.add((origin, seqno))
                have = self._log.count(origin)
                for batch in self._batches(origin, seqno, min(have, seqno + 1), have):
                    self._send(peer, batch)
            if new:
                self._lost_changed(origin, peer)
            req = self._requests.get(origin)
            if req is not None and req.peer is peer:
                del self._requests[origin]
            self._plan(origin)
            return
        # Ours lost: take theirs from the split.
        rows: list[Row] = [(ids[i], None, bodies[i]) for i in range(k, len(bodies))]
        rows[-1] = (rows[-1][0], sig, rows[-1][2])
        first_index, shown = self._log.replace(origin, seqno, rows)
        for other in self._peers:  # what was queued or sent to anyone was of the old chain
            self._unqueue(other, origin)
            other.sent.pop(origin, None)
        self.stats.accepted += len(rows)
        self._deliver_rows(origin, seqno, rows, first_index, shown)
        have = self._log.count(origin)
        for other in self._peers:
            # what we inferred it holds (from what we sent it) was of our old branch
            other.heads[origin] = other.told.get(origin, 0)
            # what we hold of it went back, or changed: say so (peers take a count that
            # went back from the peer itself, see _learn), before asking anything of it
            if other.ready and not other.closed:
                self._send_pages(other, [(origin, have)], tips=False, announce=True)
        peer.heads[origin] = max(peer.heads.get(origin, 0), start + len(bodies))
        req = self._requests.get(origin)
        if req is not None:
            del self._requests[origin]
        if origin == self.id:
            self._own_sig = None
            self._fresh = None
            self._unpushed = True
        self._lost_changed(origin, None)
        self._progress(peer, origin)
        for other in self._peers:
            self._announce_to(other, origin)

    def _lost_changed(self, origin: bytes, source: _Peer | None) -> None:
        """Notes of `origin` left the chain here, or arrived off it: its origin publishes
        their bodies again; anyone else hands them to the origin when linked to it."""
        if origin == self.id:
            self._healing = True
            return
        for peer in self._peers:
            if peer.node == origin and peer is not source:
                self._hand_back(peer)

    def _hand_back(self, peer: _Peer, *, fresh: bool = True) -> None:
        """Send the origin `peer` its notes that are off the chain here and not yet carried
        by it (it publishes them again): read a page at a time and sent as serving is, at
        most a step now; `tick` sends the rest (`fresh`: from the start, as what is owed
        changed)."""
        origin = peer.node
        if origin is None or not peer.ready or peer.closed:
            peer.handing = None
            return
        if fresh:
            peer.handing = None
            if origin not in self._log.forked:
                return
            peer.handing = self._log.runs(
                origin, self._store.owed_pages(origin, self.config.batch_notes))
        step = self.config.serve_step
        if peer.handing is None or self._step_over(peer, 0, 0, step):
            return
        spent = frames = 0
        try:
            for batch in peer.handing:
                frame = wire.encode(batch)
                self._send_frame(peer, frame)
                spent += len(frame)
                frames += 1
                if self._step_over(peer, spent, frames, step):
                    return  # the rest at the next tick
        except StoreError as e:
            self._store_failed(e)
        peer.handing = None

    def _heal(self) -> None:
        """Publish again the bodies of our own notes that are off the kept chain, once we hold
        what our peers hold of ours (else they would land beside notes we lack)."""
        me = self.id
        have = self._log.count(me)
        # (a peer that let a request for our notes go quiet claims what it cannot give)
        req = self._requests.get(me)
        if (req is not None and me not in req.peer.slow) or any(
            p.ready and not p.closed and p.heads.get(me, 0) > have and me not in p.slow
            for p in self._peers
        ):
            return
        self._healing = False
        owed = self._log.owed(me)
        if not owed:
            return
        bodies: list[Body] = []
        extra: list[Again] = []
        roots: set[bytes] = set()
        for _, _, _, _, root, root_seqno, shown in owed:
            if root in roots:
                continue
            roots.add(root)
            body = again(root_seqno, root, shown)
            extra.append((have + len(bodies), root, root_seqno,
                          self._store.delivered(me, root, root_seqno), shown))
            bodies.append(body)
        log.info("%s: our log forked; publishing again %d notes of the branch that lost "
                    "(as #%d..#%d)", self, len(bodies), have, have + len(bodies) - 1)
        notes = self._publish(bodies, extra)
        assert notes
        if self._depth == 0:
            self._push_own()

    def _on_gap(self, peer: _Peer, origin: bytes) -> None:
        """Notes arrived past our head: a frame was lost on this channel (they keep order)."""
        req = self._requests.get(origin)
        if req is not None and req.peer is peer:
            if req.start == self._log.count(origin):
                return  # already re-asked from here; these are stale batches
            del self._requests[origin]
        self._plan(origin)

    def _progress(self, peer: _Peer, origin: bytes) -> None:
        req = self._requests.get(origin)
        if req is not None and req.peer is peer:
            req.progress_at = self._now
        if origin in peer.asking:  # a new origin delivered: it may be asked for one more
            peer.window = min(peer.window + 1, self.config.new_origin_window)
        for p in self._peers:
            if origin in p.claims:
                del p.claims[origin]
                p.waiting.pop(origin, None)
                p.asking.discard(origin)
        self._plan(origin)
        for p in list(self._peers):
            if p.waiting:
                self._refill(p)

    # -- pulling -------------------------------------------------------------------------------
    def _plan(self, origin: bytes) -> None:
        """Make sure what peers have of `origin` beyond our head is being asked of one peer."""
        if self._paused:
            return  # nowhere to put it: storing resumes from tick
        have = self._log.count(origin)
        window = self.config.batch_notes * self.config.window_batches
        req = self._requests.get(origin)
        if req is not None:
            if req.peer.closed or have >= req.end:
                del self._requests[origin]
            else:
                theirs = req.peer.heads.get(origin, 0)
                # (a new origin is not asked further before it delivered anything)
                if req.end - have <= window // 2 and theirs > req.end and have:
                    end = min(theirs, have + window)
                    self._send(req.peer, wire.Want(origin, req.end, end))
                    req.end = end
                return
        best = None
        best_key: tuple[bool, bool, int] | None = None
        now = self._now
        for p in self._peers:
            count = p.heads.get(origin, 0)
            if p.closed or not p.ready or count <= have:
                continue
            fresh = now is None or p.slow.get(origin, now) <= now
            key = (fresh, p.node == origin, count)
            if best_key is None or key > best_key:
                best, best_key = p, key
        if best is None:
            return
        if not have:
            # a new origin: at most `window` of them asked of one peer at a time, in turn
            if len(best.asking) >= best.window:
                best.waiting[origin] = None
                return
            best.waiting.pop(origin, None)
            best.asking.add(origin)
        end = min(best.heads[origin], have + window)
        self._requests[origin] = _Request(best, have, end, now)
        self._send(best, wire.Want(origin, have, end))

    def _refill(self, peer: _Peer) -> None:
        """Ask `peer` for the new origins that waited for room in its window."""
        while peer.waiting and len(peer.asking) < peer.window and not peer.closed:
            origin = next(iter(peer.waiting))
            del peer.waiting[origin]
            if origin not in self._requests:
                self._plan(origin)

    # -- serving -------------------------------------------------------------------------------
    def _on_want(self, peer: _Peer, want: wire.Want) -> None:
        """Queue what `peer` asks for, minus what is queued or on its way to it already."""
        c = self.config
        origin = want.origin
        have = self._log.count(origin)
        start = want.start
        end = min(want.end, have, start + c.batch_notes * c.window_batches)
        if start >= end:
            self._send(peer, wire.Heads({origin: have}))  # we lack it: it will ask elsewhere
            return
        sent = peer.sent.get(origin)
        if sent is None:
            sent = peer.sent[origin] = _Sent(starts=deque(maxlen=4 * c.window_batches))
        now = self._now
        below = sent.end and end <= sent.begin
        if below and (
                now is None or sent.walked_at is None or now - sent.walked_at >= c.request_timeout):
            # Notes before all we sent: it walks back along a chain that differs from ours
            # (the origin forked; we may not know it yet). Once it links up it asks again for
            # what it turned down, so what we sent no longer counts (once a request_timeout,
            # as for a re-ask after silence).
            self._unqueue(peer, origin)
            sent = peer.sent[origin] = _Sent(begin=start, starts=sent.starts, walked_at=now)
            sent.starts.clear()
            sent.reask = sent.begin = start  # and a new stream starts here
            below = False
        elif below:
            sent.begin = start  # never sent: serve it, and count it as sent from here
        elif start < sent.end:
            # It asks again for what is queued or was sent. Honest reasons: a batch was lost
            # and it re-asks at once from that batch's start (gap: a later batch arrived, so
            # never the stream's first, and each such start once), or nothing arrived for
            # request_timeout (then it asks again from where it is).
            gap = start > sent.reask and start in sent.starts
            quiet = now is not None and sent.at is not None and (
                now - sent.at >= c.request_timeout)
            if gap or quiet:
                self.stats.wants_reserved += 1
                self._unqueue(peer, origin)
                sent.reask = start
                sent.starts.clear()
                sent.end = start
            elif end <= sent.end:
                self.stats.wants_refused += 1
                self._fault("wants again", peer, "%s: %s asks again for notes on their way "
                            "to it; not serving them twice", self, _h(peer.node))
                return
            else:
                start = sent.end  # only the part not on its way yet
        elif start > sent.end or sent.end == 0:
            sent.reask = sent.begin = start  # a new stream: its first batch cannot be a gap's
        if peer.queued + end - start > c.serve_queue:
            self.stats.wants_overflow += 1
            self._fault("serve queue full", peer, "%s: %s asks for more than %d notes at once; "
                        "refusing the rest", self, _h(peer.node), c.serve_queue)
            return
        ranges = peer.queue.get(origin)
        if ranges is None:
            peer.queue[origin] = [_Range(start, end)]
        elif ranges[-1].end == start:
            ranges[-1].end = end
        else:
            ranges.append(_Range(start, end))
        peer.queued += end - start
        if not below:  # (a walk back is no progress on what it asked before)
            sent.end = max(sent.end, end)
            sent.at = now

    def _held_back(self, peer: _Peer) -> bool:
        """Its channel still holds `peer_backlog` bytes we sent (the peer does not read)."""
        return _backlog(peer.channel) >= self.config.peer_backlog

    def _step_over(self, peer: _Peer, spent: int, frames: int, budget: int) -> bool:
        """A serving step to `peer` that sent `spent` bytes in `frames` batches is over: its
        budget or `serve_frames` is reached, or the peer leaves `peer_backlog` unread."""
        if spent >= budget or frames >= self.config.serve_frames or peer.closed:
            return True
        if self._held_back(peer):
            self.stats.backlog_waits += 1
            return True
        return False

    def _unqueue(self, peer: _Peer, origin: bytes) -> None:
        for r in peer.queue.pop(origin, ()):
            peer.queued -= max(0, r.end - r.pos)

    def _serve_step(self, peer: _Peer, budget: int) -> None:
        """Send `peer` queued batches, origins in turn, until `budget` bytes or
        `serve_frames` batches went out."""
        spent = frames = 0
        try:
            while peer.queue and not self._step_over(peer, spent, frames, budget):
                origin = next(iter(peer.queue))
                ranges = peer.queue[origin]
                r = ranges[0]
                have = self._log.count(origin)
                end = min(r.end, have)
                try:
                    cut = self._cut(origin, r.pos, end, have) if r.pos < end else None
                except StoreError as e:  # our own store: not the peer's fault
                    self._store_failed(e)
                    self._unqueue(peer, origin)  # served no more: it asks elsewhere
                    continue
                if r.pos < end and cut is None:
                    # damaged here: never served (the peer asks elsewhere once this request
                    # times out; we fetch it again ourselves)
                    peer.queued -= max(0, min(end, r.end) - r.pos)
                    r.pos = end
                elif cut is not None:
                    prev = r.prev if r.prev is not None else self._id_at(origin, r.pos - 1, have)
                    bodies, sig, last = cut
                    frame = wire.encode(wire.Notes(origin, r.pos, prev, tuple(bodies), sig))
                    self._send_frame(peer, frame)
                    spent += len(frame)
                    frames += 1
                    sent = peer.sent.get(origin)
                    if sent is not None:
                        sent.starts.append(r.pos)
                        sent.end = max(sent.end, r.pos + len(bodies))
                    peer.queued -= min(len(bodies), r.end - r.pos)
                    r.pos += len(bodies)  # may pass r.end: a relayed batch ends on a signature
                    r.prev = last
                    if r.pos > peer.heads.get(origin, 0):
                        peer.heads[origin] = r.pos
                del peer.queue[origin]
                if r.pos >= end:
                    peer.queued -= max(0, r.end - r.pos)
                    ranges.pop(0)
                if ranges:
                    peer.queue[origin] = ranges  # to the back: origins take turns
        except StoreError as e:
            self._store_failed(e)
            peer.queue.clear()
            peer.queued = 0
        except Exception:  # a bug must not take the driver down
            log.exception("%s: error serving %s", self, _h(peer.node))
            self._drop(peer, "internal error while serving")

    def _batches(self, origin: bytes, start: int, end: int, have: int) -> Iterator[wire.Notes]:
        """`origin`'s notes from `start` as signed batches, until `end` or the first
        signature at or after it."""
        pos, prev = start, self._id_at(origin, start - 1, have)
        while pos < end:
            cut = self._cut(origin, pos, end, have)
            if cut is None:
                return  # a damaged note: never served (it is being fetched again)
            bodies, sig, last = cut
            yield wire.Notes(origin, pos, prev, tuple(bodies), sig)
            pos += len(bodies)
            prev = last

    def _cut(
        self, origin: bytes, start: int, end: int, have: int
    ) -> tuple[list[Body], bytes, bytes] | None:
        """The next batch from `start`: within the batch limits, ending on a signed note.
        None if the store holds no intact note to serve there."""
        c = self.config
        rows = self._store.read(origin, start, min(end, start + c.batch_notes))
        if not rows:
            return None
        n = size = 0
        for _, _, body in rows:
            size += len(body)
            if n and size > c.batch_bytes:
                break
            n += 1
        if origin == self.id:
            last_id = rows[n - 1][0]
            return [r[2] for r in rows[:n]], self._sign_own(start + n - 1, last_id), last_id
        signed = [i for i in range(n) if rows[i][1] is not None]
        if not signed:
            # The run between two stored signatures is one batch as received, so it fits a
            # frame; read on to the next signature.
            stop = self._store.next_signed(origin, start)
            if stop is None or not start <= stop < have:  # a relayed head is signed: damage
                raise StoreDamaged(f"the signature after note {start} of {_h(origin)} is lost")
            rows = self._store.read(origin, start, stop + 1)
            if len(rows) < stop + 1 - start:
                return None  # damage inside the signed run
            signed = [len(rows) - 1]
        last = signed[-1]
        sig = rows[last][1]
        if sig is None:
            return None  # the stored signature moved (a damaged B-tree)
        # A stored signature is not covered by the hash links: one check a batch served
        # (about 1/1000 of a verify per note) keeps a damaged one from getting us dropped.
        if not verify(origin, sig, rows[last][0]):
            self._store.mark_damaged(origin, start + last)
            return None
        return [r[2] for r in rows[: last + 1]], sig, rows[last][0]

    def _sign_own(self, seqno: int, nid: bytes) -> bytes:
        if self._own_sig is not None and self._own_sig[0] == seqno:
            return self._own_sig[1]
        sig = self._key.sign(nid)
        self.stats.signatures += 1
        if seqno == self._log.count(self.id) - 1:
            self._own_sig = (seqno, sig)
        return sig

    # -- spreading -----------------------------------------------------------------------------
    def _push_own(self) -> None:
        """Send our new notes to every peer that is up to date with us; announce otherwise."""
        fresh, self._fresh = self._fresh, None
        self._unpushed = False
        origin = self.id
        have = self._log.count(origin)
        frames: dict[int, bytes | None] = {}  # by the seqno a push starts at: sign once
        for peer in self._peers:
            if peer.closed or not peer.ready:
                continue
            theirs = peer.heads.get(origin, 0)
            if theirs >= have:
                continue
            if origin in peer.queue:  # a serve of ours is on its way to it: that goes first
                self._announce_to(peer, origin)
                continue
            # A peer still pulling what our hello offered, or far behind, gets an
            # announcement: a push would overlap its pull or not fit a frame.
            frame = None
            if theirs >= peer.announced.get(origin, 0) and have - theirs <= self.config.batch_notes:
                if theirs not in frames:
                    frames[theirs] = self._push_frame(theirs, have, fresh)
                frame = frames[theirs]
            if frame is None:
                self._announce_to(peer, origin)
            else:
                self._send_frame(peer, frame)
                peer.heads[origin] = have

    def _push_frame(
        self, start: int, have: int, fresh: tuple[int, bytes, list[Body]] | None
    ) -> bytes | None:
        """Our notes [start, have) as one signed NOTES frame, or None if they overflow one."""
        origin = self.id
        if fresh is not None and fresh[0] == start:
            prev, bodies = fresh[1], fresh[2]
        else:
            prev = self._id_at(origin, start - 1, have)
            bodies = [r[2] for r in self._store.read(origin, start, have)]
            if len(bodies) < have - start:
                return None  # damaged: never signed and sent
        if len(bodies) > 1 and sum(map(len, bodies)) > self.config.batch_bytes:
            return None
        sig = self._sign_own(have - 1, self._log.head(origin))
        return wire.encode_notes(origin, start, prev, bodies, sig)

    def _announce_to(self, peer: _Peer, origin: bytes) -> None:
        have = self._log.count(origin)
        if (
            peer.closed
            or not peer.ready
            or peer.node == origin
            or (origin in peer.links and origin != self.id)
            or peer.heads.get(origin, 0) >= have
            or peer.announced.get(origin, 0) >= have
        ):
            return
        peer.announced[origin] = have
        self._pending_heads.setdefault(peer, {})[origin] = have

    def _flush(self) -> None:
        """End of a batch: accept merged runs, push own notes, send coalesced announcements."""
        while self._runs:
            (peer, origin), run = self._runs.popitem()
            try:
                self._accept(peer, origin, run.start, run.prev, run.bodies, run.sig)
            except RemoteProtocolError as e:
                self._drop(peer, str(e))
            except StoreError as e:
                self._store_failed(e)
            except Exception:
                log.exception("%s: error accepting notes from %s", self, _h(peer.node))
                self._drop(peer, "internal error")
        if self._healing:
            self._heal()
        if self._unpushed:
            self._push_own()
        if self._links_changed:
            self._links_changed = False
            links = wire.Links(self._linked())
            for peer in self._peers:
                if peer.ready and not peer.closed:
                    self._send(peer, links)
        pending, self._pending_heads = self._pending_heads, {}
        for peer, heads in pending.items():
            # what we hold now: a fork may have changed it since it was queued
            now = [(origin, self._log.count(origin)) for origin in heads]
            self._send_pages(peer, now, tips=False, announce=True)
        waiting = False
        for peer in list(self._peers):
            if peer.queue:
                self._serve_step(peer, self.config.serve_step)
                waiting = waiting or bool(peer.queue)
        if waiting and self.wake is not None:
            self.wake()

    # -- our own store -------------------------------------------------------------------------
    def _identity(self, create: bool) -> SigningKey:
        seed = self._store.get_meta("seed")
        if seed is None:
            if not create and not self._store.is_empty():
                raise StoreDamaged(f"{self._store.path} holds notes but no identity: damaged")
            if not create:
                raise NoIdentity(f"{self._store.path} holds no identity (emptied or removed)")
            key = SigningKey()
            self._store.set_meta("seed", key.seed)
            self._store.set_meta("node", key.public)
            return key
        if not (isinstance(seed, bytes) and len(seed) == ID_SIZE):
            raise StoreDamaged(f"the identity in {self._store.path} is damaged; run zflood check")
        key = SigningKey(seed)
        public = self._store.get_meta("node")
        if public is None:
            self._store.set_meta("node", key.public)  # stores from before it was kept
        elif public != key.public:
            raise StoreDamaged(f"the identity in {self._store.path} is damaged (its key does not "
                               "match the node id stored beside it); run zflood check")
        return key

    @property
    def store_status(self) -> dict[str, object]:
        """Our store's health for `status`: whether we are storing, the last write error
        until a write succeeds, the damaged notes found (by origin) awaiting repair, and
        how many notes kept off their chain (forks) were found damaged and are not shown."""
        return {
            "storing": not self._paused,
            "error": self._store_fault,
            "damaged": {o.hex(): len(s) for o, s in self._store.damaged.items()},
            "damaged_off_chain": len(self._store.damaged_off_chain),
            "wal_bytes": self._store.wal_size(),
            "wal_bound": self._store.wal_bound,
        }

    def check_store(self, step: int = 10_000) -> Iterator[CheckProgress]:
        """`Store.check`, on this node's open store: damage found is fetched again."""
        self._check_open()
        return self._store.check(step)

    def _store_failed(self, e: StoreError) -> None:
        """A write (or a read) of our own store failed. Stop asking peers for notes: there is
        nowhere to put them, and it is never the peer's fault. One warning per new reason."""
        message = str(e)
        if message != self._store_fault:
            log.warning("%s: %s; not asking peers for notes until it can store again",
                        self, message)
        self._store_fault = message
        self._paused = True
        self._paused_at = self._now
        self._requests.clear()
        self._runs.clear()

    def _stored(self) -> None:
        """A write succeeded: a pause for a failed one is over."""
        if self._store_fault is not None:
            log.info("%s: storing again", self)
            self._store_fault = None
        self._paused = False

    def _tick_store(self, now: float) -> None:
        c = self.config
        self._store.fit_wal()  # free space changes: the WAL's bound follows it
        if self._paused:
            if self._paused_at is None:
                self._paused_at = now
            if now - self._paused_at >= c.store_retry:
                self._paused_at = now
                if self._store.has_room(c.store_headroom):
                    self._paused = False  # try again; a new failure pauses again, quietly
                    for origin in {o for p in self._peers for o in p.heads}:
                        self._plan(origin)
        for origin, bad in list(self._store.damaged.items()):
            asked = self._repair_asked.get(origin)
            if asked is not None and asked[1] is not None and now - asked[1] < c.request_timeout:
                continue
            lo = min(bad)
            holders = [
                p for p in self._peers
                if p.ready and not p.closed and p.heads.get(origin, 0) > lo
            ]
            if not holders:
                continue
            # the peer asked last time goes last: it may lack it, or be slow
            holders.sort(key=lambda p: asked is not None and p is asked[0])
            peer = holders[0]
            end = min(max(bad) + 1, lo + c.batch_notes, peer.heads[origin])
            if end <= lo:
                continue
            self._repair_asked[origin] = (peer, now)
            self._send(peer, wire.Want(origin, lo, end))

    def _on_damage(self, origin: bytes, seqno: int) -> None:
        if origin not in self._repair_asked:
            log.warning("%s: stored note %d of %s fails its hash link (the file is damaged): "
                        "it is neither delivered nor served, and is fetched again from a peer",
                        self, seqno, _h(origin))
            self._repair_asked[origin] = (None, None)

    def _repair(
        self, origin: bytes, start: int, prev: bytes, ids: list[bytes],
        bodies: list[Body] | tuple[Body, ...], sig: bytes, have: int,
    ) -> None:
        """A peer's signed run of `origin` covers notes damaged here: put them back, if the
        run continues our chain where it is intact."""
        bad = self._store.damaged.get(origin, set())
        if start > 0 and start - 1 not in bad and (origin, start - 1) not in \
                self._store.unrepairable:
            stored = self._store.id_at(origin, start - 1)
            if stored != prev:
                return  # another chain: the fork logic decides
        repaired = 0
        for i, nid in enumerate(ids):
            seqno = start + i
            if seqno >= have or seqno not in bad:
                continue
            row = (nid, sig if i == len(ids) - 1 else None, bodies[i])
            index = self._store.repair(origin, seqno, row)
            if index is None:
                if (origin, seqno) in self._store.unrepairable:
                    log.warning("%s: note %d of %s was lost from the store and cannot be put"
                                " back in its place: it stays out", self, seqno, _h(origin))
                continue
            repaired += 1
            self._deliver(Note(origin, seqno, bodies[i], nid, index))
        if repaired:
            log.warning("%s: %d damaged notes of %s fetched again and repaired%s", self,
                        repaired, _h(origin), "" if origin in self._store.damaged else
                        "; none left")
            if origin not in self._store.damaged:
                self._repair_asked.pop(origin, None)
            else:
                self._repair_asked[origin] = (None, None)  # ask for the rest at once

    # -- channel plumbing ----------------------------------------------------------------------
    def _linked(self) -> tuple[bytes, ...]:
        return tuple({p.node for p in self._peers if p.ready and not p.closed and p.node})

    def _send_hello(self, peer: _Peer) -> None:
        peer.hello_at = self._now
        items = self._heads_items()
        peer.announced = dict(items)
        page = self.config.heads_page
        first = dict(items[:page])
        hello = wire.Hello(wire.VERSION, self.group, self.id, first,
                           {origin: self._log.head(origin) for origin in first},
                           self._linked(), peer.ready)
        self._send(peer, hello)
        if peer.ready:  # else the rest follows its hello: before that it would drop them
            self._send_pages(peer, items[page:], tips=True, announce=True)

    def _heads_items(self) -> list[tuple[bytes, int]]:
        """Our heads, our own origin first (so a hello's first page always carries it)."""
        counts = self._log.counts()
        own = counts.pop(self.id, None)
        items = list(counts.items())
        return items if own is None else [(self.id, own), *items]

    def _send_pages(self, peer: _Peer, items: list[tuple[bytes, int]], *, tips: bool,
                    announce: bool) -> None:
        """`items` as HEADS frames of at most `heads_page` origins each; with `tips` they
        carry each origin's last id too (what a hello carries, for fork checks)."""
        page = self.config.heads_page
        for i in range(0, len(items), page):
            heads = dict(items[i:i + page])
            if announce:
                peer.announced.update(heads)
            self._send(peer, wire.Heads(
                heads, {origin: self._log.head(origin) for origin in heads} if tips else {}))

    def _send(self, peer: _Peer, msg: wire.Message) -> None:
        if not peer.closed:
            self._send_frame(peer, wire.encode(msg))

    def _send_frame(self, peer: _Peer, frame: bytes) -> None:
        if peer.closed:
            return
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        peer.channel.send(frame)

    def _drop(self, peer: _Peer, reason: str) -> None:
        """A peer broke the protocol: log why and close its channel. Nothing was stored."""
        if peer.closed:
            return
        log.warning("%s: closing channel to %s: %s", self, _h(peer.node), reason)
        self.stats.channels_closed_on_error += 1
        peer.channel.close()
        self._on_close(peer)

    def _on_close(self, peer: _Peer) -> None:
        if peer.closed and peer not in self._peers:
            return
        peer.closed = True
        if peer in self._peers:
            self._peers.remove(peer)
        for key in [k for k in self._runs if k[0] is peer]:
            del self._runs[key]
        self._pending_heads.pop(peer, None)
        peer.queue.clear()
        peer.queued = 0
        if self._closed:
            return
        with self.batch():
            if peer.ready:
                self._links_changed = True
            for origin, req in list(self._requests.items()):
                if req.peer is peer:
                    del self._requests[origin]
                    self._plan(origin)

    def _deliver(self, note: Note) -> None:
        for handler in list(self._handlers):
            try:
                handler(note)
            except Exception:  # one bad subscriber must not stop replication
                log.exception("%s: subscriber %r failed on a note", self, handler)

    def _load(self, origins: dict[bytes, list[list[object]]]) -> None:
        for origin, notes in origins.items():
            prev = GENESIS
            rows: list[Row] = []
            for seqno, (body, sig) in enumerate(notes):
                assert isinstance(body, str | bytes) and (sig is None or isinstance(sig, bytes))
                prev = note_id(origin, seqno, prev, body)
                rows.append((prev, sig, body))
            if rows:
                self._log.append(origin, 0, rows)

    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed("this node is closed")


class _NoChannel:
    """Where an import's batches come from: nothing is ever sent back."""

    def send(self, frame: bytes) -> None:
        pass

    def on_receive(self, callback: Callable[[bytes], None]) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        pass

    def close(self) -> None:
        pass


def _unpickle(data: bytes) -> tuple[bytes, bytes, dict[bytes, list[list[object]]]]:
    try:
        state = cbor2.loads(data)
        seed, group, origins = state["seed"], state["group"], state["origins"]
        if not (
            state.get("v") == 1
            and isinstance(seed, bytes)
            and isinstance(group, bytes)
            and isinstance(origins, dict)
        ):
            raise ValueError
    except Exception:
        raise LocalError("not a zflood pickle") from None
    return seed, group, origins


def _h(node: bytes | None) -> str:
    return "?" if node is None else node[:4].hex()
