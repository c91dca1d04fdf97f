"""A deterministic discrete-event simulator for engines: in-memory channels with seeded latency,
loss, duplication and partitions, a clock that skips ahead, and frame counts per link.

Like trio's fake network, it is public so that anyone can test an engine without sockets:

    sim = Sim(seed=1)
    end = sim.connect_nodes(a, b, latency=(0.001, 0.010), loss=0.01)
    a.publish("hi")
    sim.run_until_quiescent()          # lossless links need no timer
    sim.run(10.0, tick=0.5)            # lossy ones: the engines' tick(now) repairs losses

Each direction of a link keeps order (a frame never overtakes an earlier one), as ZeroMQ does;
loss and `down` drop frames without closing, as ZeroMQ does around reconnects; `close()` closes
both ends. Nothing here reads a real clock.

An engine that has answers waiting in its serve queue (`serving`) is pumped (`serve()`) by
an event at the current time, after the events already due: as a daemon's loop does, other
work runs between serving steps.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Latency = float | tuple[float, float]


class SimNode(Protocol):
    def connect(self, channel: Any) -> None: ...
    def tick(self, now: float) -> None: ...


@dataclass
class Counts:
    frames: int = 0
    bytes: int = 0
    dropped: int = 0


class SimChannel:
    """One end of a simulated link: the seed's Channel, carrying bytes."""

    def __init__(self, link: SimLink, side: int) -> None:
        self._link = link
        self._side = side
        self._receive: Callable[[bytes], None] | None = None
        self._on_close: Callable[[], None] | None = None
        self._waiting: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        if not isinstance(frame, bytes):
            raise TypeError("a channel carries bytes")
        if not self.closed:
            self._link._transmit(self._side, frame)

    def on_receive(self, callback: Callable[[bytes], None]) -> None:
        if self._receive is not None:
            raise RuntimeError("on_receive may be set once")
        self._receive = callback
        waiting, self._waiting = self._waiting, []
        for frame in waiting:
            if not self.closed:
                callback(frame)

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._on_close is not None:
            raise RuntimeError("on_close may be set once")
        self._on_close = callback
        if self.closed:
            callback()

    def close(self) -> None:
        self._link.close()

    def _deliver(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._receive is None:
            self._waiting.append(frame)
        else:
            self._receive(frame)

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self._waiting.clear()
            if self._on_close is not None:
                self._on_close()


@dataclass(eq=False)
class SimLink:
    sim: Sim
    latency: Latency
    loss: float
    duplicate: float
    owners: tuple[int, int] = (0, 0)  # id() of the node at each end
    down: bool = False  # partitioned: frames are dropped, the channels stay open
    counts: tuple[Counts, Counts] = field(default_factory=lambda: (Counts(), Counts()))
    ends: tuple[SimChannel, SimChannel] = field(init=False)
    _last: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def __post_init__(self) -> None:
        self.ends = (SimChannel(self, 0), SimChannel(self, 1))

    @property
    def closed(self) -> bool:
        return self.ends[0].closed

    def close(self) -> None:
        for end in self.ends:
            end._closed()

    @property
    def frames_sent(self) -> int:
        return self.counts[0].frames + self.counts[1].frames

    @property
    def bytes_sent(self) -> int:
        return self.counts[0].bytes + self.counts[1].bytes

    def _transmit(self, side: int, frame: bytes) -> None:
        sim = self.sim
        counts = self.counts[side]
        counts.frames += 1
        counts.bytes += len(frame)
        if self.down or (self.loss and sim.random.random() < self.loss):
            counts.dropped += 1
            return
        target = self.ends[1 - side]
        copies = 2 if self.duplicate and sim.random.random() < self.duplicate else 1
        for _ in range(copies):
            if isinstance(self.latency, tuple):
                delay = sim.random.uniform(*self.latency)
            else:
                delay = self.latency
            # per-direction order: a frame never arrives before one sent earlier
            at = max(sim.now + delay, self._last[side])
            self._last[side] = at
            sim.at(at, lambda: target._deliver(frame))


class Sim:
    """An event queue and a clock. Time only moves when events run."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.now = 0.0
        self.links: list[SimLink] = []
        self.nodes: list[SimNode] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._pumping: set[int] = set()  # id() of nodes with a serve step scheduled

    def at(self, when: float, callback: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, callback))

    def add(self, node: SimNode) -> None:
        """Have `run` tick this node (nodes given to connect_nodes are added already)."""
        if all(n is not node for n in self.nodes):
            self.nodes.append(node)

    def connect_nodes(
        self, a: SimNode, b: SimNode, *, latency: Latency = 0.0, loss: float = 0.0,
        duplicate: float = 0.0,
    ) -> SimChannel:
        """Link `a` and `b`; returns `a`'s end (its `close()` closes the link)."""
        link = SimLink(self, latency, loss, duplicate, (id(a), id(b)))
        self.links.append(link)
        self.add(a)
        self.add(b)
        a.connect(link.ends[0])
        b.connect(link.ends[1])
        return link.ends[0]

    def link_of(self, end: SimChannel) -> SimLink:
        return end._link

    def partition(self, *groups: list[SimNode]) -> None:
        """Drop every frame between different groups until `heal()`; channels stay open."""
        side = {id(n): i for i, group in enumerate(groups) for n in group}
        for link in self.links:
            a, b = link.owners
            if side.get(a) != side.get(b):
                link.down = True

    def heal(self) -> None:
        for link in self.links:
            link.down = False

    def _wake(self) -> None:
        """Schedule a serve step for each node that has answers waiting."""
        for node in self.nodes:
            if getattr(node, "serving", False) and id(node) not in self._pumping:
                self._pumping.add(id(node))
                self.at(self.now, lambda node=node: self._pump(node))  # type: ignore[misc]

    def _pump(self, node: SimNode) -> None:
        self._pumping.discard(id(node))
        if any(n is node for n in self.nodes):
            node.serve()  # type: ignore[attr-defined]

    def run_until_quiescent(self, max_events: int = 10_000_000) -> int:
        """Run events until none is left; returns how many ran."""
        ran = 0
        self._wake()
        while self._queue:
            when, _, callback = heapq.heappop(self._queue)
            self.now = when
            callback()
            self._wake()
            ran += 1
            if ran >= max_events:
                raise RuntimeError(f"not quiescent after {max_events} events (seed {self.seed})")
        return ran

    def run(self, duration: float, *, tick: float | None = None) -> None:
        """Run for `duration` simulated seconds, ticking every node every `tick` seconds."""
        end = self.now + duration
        next_tick = self.now if tick else end + 1
        while True:
            when = self._queue[0][0] if self._queue else end + 1
            if min(when, next_tick) > end:
                break
            if next_tick <= when:
                self.now = next_tick
                for node in list(self.nodes):
                    node.tick(self.now)
                assert tick is not None
                next_tick += tick
            else:
                _, _, callback = heapq.heappop(self._queue)
                self.now = when
                callback()
            self._wake()
        self.now = end

    def run_until(
        self, done: Callable[[], bool], *, timeout: float, tick: float | None = None
    ) -> bool:
        """Run until `done()` (checked between events and ticks) or `timeout`; True if done."""
        end = self.now + timeout
        step = tick or timeout
        while not done():
            if self.now >= end:
                return False
            self.run(min(step, end - self.now), tick=tick)
        return True

    @property
    def frames_sent(self) -> int:
        return sum(link.frames_sent for link in self.links)

    @property
    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self.links)
