"""Bounded cost in the engine: what one peer (a member gone bad) can make a node spend.

Each attack of issue 8 that the engine answers runs here at a small scale, on the simulator or
on channels the test drives by hand, and asserts its bound: state held, bytes sent per byte
received, requests made, log lines written. And the honest side: many origins still sync, and
a lost batch is still served again.
"""

from __future__ import annotations

import functools
import logging
import os

import cbor2
import pytest
from channels import ManualChannel, linked

from zflood import Config, Node, wire
from zflood.identity import GENESIS, SigningKey, note_id
from zflood.sim import Sim


@functools.cache
def minted(n: int) -> tuple[wire.Notes, ...]:
    """`n` origins of one signed note each: what a member minting fresh keys makes."""
    batches = []
    for i in range(n):
        key = SigningKey(i.to_bytes(32, "big"))
        body = f"origin {i}"
        nid = note_id(key.public, 0, GENESIS, body)
        batches.append(wire.Notes(key.public, 0, GENESIS, (body,), key.sign(nid)))
    return tuple(batches)


def holding(n: int, config: Config | None = None) -> Node:
    """A new node (an identity of its own) holding `n` minted origins. Built from a pickle,
    which the node trusts as its own state: the signatures are checked once, by whoever the
    node then serves."""
    origins = {b.origin: [[b.bodies[0], b.sig]] for b in minted(n)}
    state = {"v": 1, "seed": os.urandom(32), "group": b"", "origins": origins}
    return Node(cbor2.dumps(state), config=config or Config())


def decodes_everything(sim: Sim, config: Config) -> None:
    """Every frame the engines sent also passes the limits every receiver enforces."""
    for node in sim.nodes:
        assert isinstance(node, Node)
        assert node.stats.channels_closed_on_error == 0


# -- 1. more origins than a message can carry ---------------------------------------------------


@pytest.mark.timeout(120)
def test_two_nodes_sync_ten_thousand_origins() -> None:
    config = Config()
    a, b = holding(10_000, config), Node(config=config)
    a.publish("a's own")
    sim = Sim(1)
    sim.connect_nodes(a, b)
    sim.run_until_quiescent()  # a lossless link needs no timer, paged heads included
    assert b.heads == a.heads and len(b.heads) == 10_001
    decodes_everything(sim, config)
    assert b.stats.duplicates == 0 and b.stats.claims_unanswered == 0


@pytest.mark.timeout(120)
def test_a_node_holding_ten_thousand_origins_serves_a_new_member() -> None:
    config = Config()
    a, b = holding(10_000, config), Node(config=config)
    sim = Sim(2)
    sim.connect_nodes(a, b)
    sim.run_until_quiescent()
    newcomer = Node(config=config)
    newcomer.publish("hello, I am new")
    sim.connect_nodes(b, newcomer, latency=0.001)
    sim.run_until_quiescent()
    assert newcomer.heads == b.heads == a.heads
    assert newcomer.count == 10_001
    decodes_everything(sim, config)


def test_every_hello_and_heads_frame_fits_one_page() -> None:
    config = Config(heads_page=16)
    a, b = holding(100, config), Node(config=config)
    ca, _ = linked(a, b)
    for node in (a, b):
        node.tick(0.0)
        node.tick(config.sync_interval)  # the periodic full heads, paged too
    pages = [m for m in ca.messages() if isinstance(m, wire.Hello | wire.Heads)]
    assert len(pages) > 100 // 16
    assert all(len(m.heads) <= 16 and len(m.tips) <= 16 for m in pages)


def test_paged_heads_converge_over_a_lossy_link() -> None:
    config = Config(heads_page=8)
    a, b = holding(200, config), Node(config=config)
    sim = Sim(3)
    sim.connect_nodes(a, b, latency=(0.001, 0.02), loss=0.2)
    assert sim.run_until(lambda: b.heads == a.heads, timeout=120, tick=0.5), "sim seed 3"


def test_a_fork_on_a_later_page_of_heads_is_noticed() -> None:
    """Tips come with every page after a hello: two chains of one origin that differ at
    equal length are found whichever page the origin is on."""
    config = Config(heads_page=4)
    a, b = holding(20, config), holding(20, config)
    key = SigningKey(b"\xee" * 32)
    for node, body in ((a, "one thing"), (b, "another")):
        nid = note_id(key.public, 0, GENESIS, body)
        node.import_notes(wire.Notes(key.public, 0, GENESIS, (body,), key.sign(nid)))
    sim = Sim(4)
    sim.connect_nodes(a, b)
    sim.run_until_quiescent()
    assert [f.origin for f in a.forks] == [key.public]
    assert [f.origin for f in b.forks] == [key.public]


def test_past_max_origins_new_origins_are_refused_but_links_stay_up() -> None:
    config = Config(max_origins=50)
    minter = holding(80)  # holds more than the others will take
    victim, newcomer = Node(config=config), Node(config=config)
    sim = Sim(5)
    sim.connect_nodes(minter, victim)
    sim.run_until_quiescent()
    assert len(victim.heads) == 50
    assert victim.stats.origins_refused > 0
    # a new member linked directly still gets in, and gets what the victim holds
    newcomer.publish("let me in")
    sim.connect_nodes(victim, newcomer)
    sim.run_until_quiescent()
    assert victim.heads[newcomer.id] == 1
    minter.publish("still linked")
    sim.run_until_quiescent()
    assert victim.heads[minter.id] == 1
    assert not any(link.closed for link in sim.links)
    assert victim.stats.channels_closed_on_error == 0


# -- 2. WANT amplification ---------------------------------------------------------------------


def server(notes: int = 4000, config: Config | None = None) -> tuple[Node, ManualChannel]:
    """A node holding `notes` notes of 100 bytes, linked to a peer the test plays."""
    node = Node(config=config or Config())
    with node.batch():
        for i in range(notes):
            node.publish(f"{i:>100}")
    ch = ManualChannel()
    node.connect(ch)
    peer = SigningKey(b"\x02" * 32)
    ch.feed(wire.encode(wire.Hello(wire.VERSION, b"", peer.public, {}, {}, (), True)))
    ch.sent.clear()
    return node, ch


def drain(node: Node) -> None:
    while node.serve():
        pass


def test_the_same_want_over_and_over_is_served_once() -> None:
    node, ch = server()
    want = wire.encode(wire.Want(node.id, 0, 4000))
    ch.feed(want)
    drain(node)
    once = sum(map(len, ch.sent))
    ch.sent.clear()
    now = 0.0
    node.tick(now)
    for i in range(200):  # 9 KB of WANTs, over two seconds
        ch.feed(want)
        ch.feed(wire.encode(wire.Want(node.id, 1 + i * 7, 4000)))  # and overlapping ones
        if i % 20 == 0:
            now += 0.2
            node.tick(now)
    drain(node)
    again = sum(len(f) for f in ch.sent if isinstance(wire.decode(f), wire.Notes))
    print(f"\none serve: {once} bytes; then 400 WANTs got {again} bytes")
    assert again == 0
    assert node.stats.wants_refused == 400


def test_a_want_is_served_in_bounded_steps() -> None:
    config = Config(serve_step=64 * 1024)
    node, ch = server(4000, config)
    ch.feed(wire.encode(wire.Want(node.id, 0, 4000)))  # about 420 KB of notes
    steps = [sum(map(len, ch.sent))]
    while node.serving:
        ch.sent.clear()
        node.serve()
        steps.append(sum(map(len, ch.sent)))
    # a step stops once past its budget: by at most one batch (here 1,024 notes, 105 KB)
    batch = 1024 * 103
    assert len(steps) == 4 and all(s <= config.serve_step + batch for s in steps), steps
    assert node.stats.wants_refused == 0


def test_wants_past_the_serve_queue_are_refused() -> None:
    config = Config(batch_notes=100, serve_queue=1000, serve_step=1)  # a batch a step
    node, ch = server(4000, config)
    taken: set[int] = set()
    for start in range(0, 4000, 500):
        before = node.stats.wants_overflow
        ch.feed(wire.encode(wire.Want(node.id, start, start + 500)))
        if node.stats.wants_overflow == before:
            taken.update(range(start, start + 500))
        assert node.serve_queued <= config.serve_queue
    assert node.stats.wants_overflow > 0 and taken
    drain(node)
    sent = {s for m in ch.messages() if isinstance(m, wire.Notes) for s in range(m.start, m.end)}
    assert sent == taken  # what was taken is served, what was refused is not


def test_a_gap_re_ask_is_served_again_at_once() -> None:
    """A lost batch: the requester sees the next one start past its head and re-asks from
    its head, which is where a batch we sent starts. No timer needed."""
    a, b = Node(), Node()
    with a.batch():
        for i in range(5000):
            a.publish(f"{i:>100}")
    ca, cb = linked(a, b)
    batches = 0
    done = [1, 1]  # the hellos were traded
    while True:
        new_a, new_b = ca.sent[done[0]:], cb.sent[done[1]:]
        if not new_a and not new_b and not a.serving:
            break
        done = [len(ca.sent), len(cb.sent)]
        for frame in new_a:
            if isinstance(wire.decode(frame), wire.Notes):
                batches += 1
                if batches == 2:  # the second batch from a to b never arrives
                    continue
            cb.feed(frame)
        for frame in new_b:
            ca.feed(frame)
        a.serve()
    assert batches > 2 and b.heads == a.heads
    assert a.stats.wants_reserved == 1 and a.stats.wants_refused == 0


def test_a_want_asked_again_after_request_timeout_is_served_again() -> None:
    node, ch = server(100)
    node.tick(0.0)
    want = wire.encode(wire.Want(node.id, 0, 100))
    ch.feed(want)
    ch.feed(want)
    assert node.stats.wants_refused == 1
    node.tick(node.config.request_timeout)
    ch.sent.clear()
    ch.feed(want)  # it heard nothing for request_timeout: it lost them
    assert node.stats.wants_reserved == 1
    assert any(isinstance(m, wire.Notes) for m in ch.messages())


class UnreadChannel(ManualChannel):
    """A link whose peer reads nothing: every frame sent stays in its `backlog` until the
    test says the peer read it."""

    def __init__(self) -> None:
        super().__init__()
        self.backlog = 0

    def send(self, frame: bytes) -> None:
        super().send(frame)
        self.backlog += len(frame)


def test_a_peer_that_reads_nothing_holds_at_most_peer_backlog_bytes() -> None:
    config = Config(peer_backlog=256 * 1024)
    node = Node(config=config)
    with node.batch():
        for i in range(20_000):  # about 2 MB of notes
            node.publish(f"{i:>100}")
    ch = UnreadChannel()
    node.connect(ch)
    ch.feed(wire.encode(wire.Hello(wire.VERSION, b"", SigningKey(b"\x02" * 32).public, {}, {},
                                   (), True)))
    for start in range(0, 20_000, 1000):  # distinct ranges: each is served once
        ch.feed(wire.encode(wire.Want(node.id, start, start + 1000)))
    while node.serve():
        pass
    held = ch.backlog
    assert node.serve_queued and node.stats.backlog_waits > 0  # the rest waits, as ranges
    # a step stops at the bound, past it by at most one batch
    assert config.peer_backlog <= held <= config.peer_backlog + config.batch_bytes + 4096, held
    for _ in range(10):
        assert not node.serve() and ch.backlog == held  # asking again sends nothing more
    ch.backlog = 0  # the peer read it all: serving goes on where it stopped
    while node.serve_queued:
        node.serve()
        assert ch.backlog <= config.peer_backlog + config.batch_bytes + 4096
        ch.backlog = 0
    sent = [m for m in ch.messages() if isinstance(m, wire.Notes)]
    assert sorted(s for m in sent for s in range(m.start, m.end)) == list(range(20_000))


def test_a_walk_back_lets_the_asker_have_again_what_it_turned_down_once() -> None:
    """A peer whose chain differs from ours (a fork) turns our batch down, walks back to find
    the split, then asks again for what it turned down: served, once a request_timeout."""
    node, ch = server(3000)
    node.tick(0.0)

    def notes_for(start: int, end: int) -> int:
        ch.sent.clear()
        ch.feed(wire.encode(wire.Want(node.id, start, end)))
        drain(node)
        return sum(len(m.bodies) for m in ch.messages() if isinstance(m, wire.Notes))

    assert notes_for(2048, 3000) == 952
    assert notes_for(1024, 2048) == 1024  # the walk back: never sent
    assert notes_for(2048, 3000) == 952  # what it turned down, again
    assert notes_for(2048, 3000) == 952  # (a batch start past the stream's: a gap re-ask)
    assert notes_for(2048, 3000) == 0  # each once
    assert notes_for(0, 1024) == 1024  # walking further back: never sent either...
    assert notes_for(1024, 3000) == 0  # ... but no second helping within request_timeout
    node.tick(node.config.request_timeout)
    assert notes_for(1024, 3000) == 1976  # silence for request_timeout: served again


# -- 3. HEADS with fake origins ------------------------------------------------------------------


def test_fake_claims_cost_bounded_state_requests_and_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Config(claims_per_peer=1000)
    victim = Node(config=config)
    honest = Node(config=config)
    sim = Sim(6)
    sim.connect_nodes(victim, honest, latency=0.001)
    ch = ManualChannel()
    victim.connect(ch)
    liar = SigningKey(b"\x03" * 32)
    ch.feed(wire.encode(wire.Hello(wire.VERSION, b"", liar.public, {}, {}, (), True)))
    fake = [SigningKey((10**6 + i).to_bytes(32, "big")).public for i in range(20_000)]
    page = config.heads_page
    with caplog.at_level(logging.INFO, logger="zflood.node"):
        for second in range(16):  # 15 s of fresh claims, all 20,000 of them each second
            for i in range(0, len(fake), page):
                ch.feed(wire.encode(wire.Heads({o: 1 + second for o in fake[i:i + page]}, {})))
            sim.run(1.0, tick=0.5)
        honest.publish("an honest note still gets through")
        sim.run(1.0, tick=0.5)
    assert victim.heads.get(honest.id) == 1
    heads = next(p["heads"] for p in victim.peers() if p["node"] == liar.public)
    assert isinstance(heads, dict)
    claims = len(heads)
    wants = [m for m in ch.messages() if isinstance(m, wire.Want)]
    lines = [r for r in caplog.records if r.name == "zflood.node"]
    print(f"\nclaims held {claims}, WANTs sent {len(wants)}, log lines {len(lines)}, "
          f"unanswered {victim.stats.claims_unanswered}, dropped {victim.stats.claims_dropped}")
    assert claims <= config.claims_per_peer
    # the first window, then about one a request_timeout once the window has shrunk
    assert len(wants) <= config.new_origin_window + 16 / config.request_timeout + 2
    assert victim.stats.claims_dropped > 0 and victim.stats.claims_unanswered > 0
    assert len(lines) <= 4, [r.getMessage() for r in lines]
    assert not ch.closed
