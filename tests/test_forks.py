"""Forks: a restored backup (or a lost WAL) that published before catching up. Every member
ends with the same branch whatever order it saw them in, keeps the proof, and the origin
publishes its losing notes' bodies again, so every body written reaches every member once."""

from __future__ import annotations

import collections
import itertools
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from channels import ManualChannel

from zflood import Config, Node, Note, wire
from zflood.errors import LocalError
from zflood.identity import SigningKey
from zflood.log import AGAIN_PREFIX, again, carried, kept
from zflood.sim import Sim, SimChannel
from zflood.store import Store

TICK = 0.5
RUNS = 200  # restore-and-publish runs, each with its own seed


class Member:
    """A node and how many times its subscriber saw each body."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seen: collections.Counter[object] = collections.Counter()
        node.subscribe(self._on_note)

    def _on_note(self, note: Note) -> None:
        self.seen[note.body] += 1


def keyed(rng: random.Random, path: Path | None = None) -> Node:
    """A node whose key comes from `rng`, so that a seed decides which branch a fork keeps."""
    seed = rng.randbytes(32)
    if path is None:
        return Node(cbor2.dumps({"v": 1, "seed": seed, "group": b"", "origins": {}}))
    store = Store(path)
    store.set_meta("seed", seed)
    store.close()
    return Node(path=str(path))


def chains(node: Node) -> dict[bytes, list[bytes]]:
    """Every origin's chain as held: the ids in seqno order."""
    store = node._store
    return {o: [row[0] for row in store.read(o, 0, n)] for o, n in node.heads.items()}


def converged(members: list[Member]) -> bool:
    first = chains(members[0].node)
    return all(chains(m.node) == first for m in members[1:])


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="zforks") as path:
        yield Path(path)


def restore_scenario(tmp: Path, seed: int) -> bool:
    """The issue's case in the simulator, with the seed choosing the group's size, who
    publishes what and when, the links before and after the restore, their latency and loss,
    whether the restored machine publishes before or after it links, and whether a new member
    first meets only the restored machine. One run in ten keeps the origin in a file and
    restores a copy of it; the others restore a pickle (the same state, in memory: fast)."""
    rng = random.Random(seed)
    where = f"(seed {seed})"
    sim = Sim(seed)
    durable = seed % 10 == 0
    path = tmp / f"o{seed}.db"
    backup = tmp / f"o{seed}.backup.db"
    origin = Member(keyed(rng, path if durable else None))
    origin_id = origin.node.id
    others = [Member(keyed(rng)) for _ in range(rng.randint(2, 4))]
    written: list[str] = []  # every body published on the origin's machine
    counter = iter(range(10**6))

    def publish(m: Member, n: int) -> list[Note]:
        notes = []
        for _ in range(n):
            mine = m.node.id == origin_id  # the origin's machine, live or restored
            body = f"{'o' if mine else 'x'} {next(counter)}"
            notes.append(m.node.publish(body))
            if mine:
                written.append(body)
        return notes

    def link_all(members: list[Member], lossy: bool) -> list[SimChannel]:
        ends = []
        order = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
        rng.shuffle(order)
        for a, b in order:
            if rng.random() < 0.7 or b is members[-1]:
                loss = rng.choice([0.0, 0.0, 0.1]) if lossy else 0.0
                ends.append(sim.connect_nodes(a.node, b.node, latency=(0.001, 0.02), loss=loss))
        return ends

    # Before the backup: everyone meets, the origin and the others publish.
    members = [origin, *others]
    publish(origin, rng.randint(1, 4))
    for m in others:
        publish(m, rng.randint(0, 2))
    ends = [sim.connect_nodes(origin.node, m.node, latency=(0.001, 0.02)) for m in others]
    assert sim.run_until(lambda: converged(members), timeout=60, tick=TICK), where
    for end in ends:
        end.close()
    if durable:
        sim.nodes.remove(origin.node)
        origin.node.close()
        shutil.copy(path, backup)
        origin = Member(Node(path=str(path)))
    else:
        pickled = origin.node.pickle()
    # The live machine publishes more, which reaches everyone; then it is stopped.
    members = [origin, *others]
    ends = [sim.connect_nodes(origin.node, m.node, latency=(0.001, 0.02)) for m in others]
    publish(origin, rng.randint(1, 6))
    publish(rng.choice(others), rng.randint(0, 2))
    assert sim.run_until(lambda: converged(members), timeout=60, tick=TICK), where
    for end in ends:
        end.close()
    sim.nodes.remove(origin.node)
    origin.node.close()
    # The backup comes back and publishes: offline, or as its links come up.
    if durable:
        shutil.copy(backup, path)
    restored = Member(Node(path=str(path)) if durable else Node(pickled))
    offline = rng.random() < 0.7
    first_restored: list[Note] = []  # the restored machine's first new note
    if offline:
        first_restored = publish(restored, rng.randint(1, 6))
    if rng.random() < 0.5:
        # a new member whose first link is to the restored machine alone
        newcomer = Member(keyed(rng))
        sim.connect_nodes(restored.node, newcomer.node, latency=(0.001, 0.02))
        sim.run(rng.uniform(0.0, 2.0), tick=TICK)
        others.append(newcomer)
    members = [restored, *others]
    rng.shuffle(members)
    lossy = rng.random() < 0.5
    ends = link_all(members, lossy)
    if not offline:
        first_restored = publish(restored, rng.randint(1, 6))
    for _ in range(rng.randint(0, 3)):
        sim.run(rng.uniform(0.0, 1.0), tick=TICK)
        publish(rng.choice(members), rng.randint(0, 2))
    # Finally the LAN heals: every member links to every other (as discovery makes them).
    for end in ends:
        end.close()
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            sim.connect_nodes(a.node, b.node, latency=(0.001, 0.02))
    def everyone_got_all() -> bool:
        return converged(members) and all(all(m.seen[b] for b in written) for m in members)

    if not lossy:  # over channels that lose nothing it converges with no timer at all
        sim.run_until_quiescent()
        assert everyone_got_all(), f"not converged without ticks {where}: " + str(
            [(m.node, m.node.heads.get(restored.node.id)) for m in members])
    assert sim.run_until(everyone_got_all, timeout=300, tick=TICK), (
        f"not converged {where}: "
        + str([(m.node, m.node.heads.get(restored.node.id)) for m in members])
    )
    sim.run(3 * TICK, tick=TICK)  # a little longer: nothing more may arrive twice
    assert converged(members), where
    for m in members:
        twice = [b for b in written if m.seen[b] != 1]
        assert not twice, f"{m.node} saw these a number of times other than once {where}: " + str(
            {b: m.seen[b] for b in twice})
        assert all(v == 1 for v in m.seen.values()), f"{m.node} saw something twice {where}"
        replayed = collections.Counter(n.body for n in m.node.notes())
        assert replayed == m.seen, f"{m.node}'s replay differs from what it delivered {where}"
    split = restored.node.forks
    assert split and all(f.origin == restored.node.id for f in split), where
    first = first_restored[0]
    restored_kept = chains(restored.node)[origin_id][first.seqno] == first.id
    for m in members:
        m.node.close()
    return restored_kept


def test_restore_and_publish_runs_converge_and_deliver_each_body_once(tmp: Path) -> None:
    outcomes = collections.Counter(restore_scenario(tmp, seed) for seed in range(RUNS))
    # the rule favours neither side: both the restored branch and the live one were kept
    assert outcomes[True] > RUNS // 5 and outcomes[False] > RUNS // 5, outcomes


def test_the_rule_keeps_the_smaller_id_at_the_split() -> None:
    assert kept(b"\x01" * 32, b"\x02" * 32) == b"\x01" * 32
    assert kept(b"\x02" * 32, b"\x01" * 32) == b"\x01" * 32


def two_incarnations() -> tuple[Node, Node]:
    """One origin, two incarnations that each published a different note at seqno 1."""
    x = Node()
    x.publish("zero")
    twin = Node(x.pickle())
    x.publish("one, here")
    twin.publish("one, there")
    return x, twin


def test_both_orders_of_arrival_keep_the_same_branch_and_the_proof() -> None:
    x, twin = two_incarnations()
    first, second = Member(Node()), Member(Node())
    sim = Sim(3)
    a = sim.connect_nodes(x, first.node)
    b = sim.connect_nodes(twin, second.node)
    sim.run_until_quiescent()
    a.close()
    b.close()
    assert chains(first.node) != chains(second.node)  # each saw one branch first
    sim.connect_nodes(first.node, twin)
    sim.connect_nodes(second.node, x)
    sim.run_until_quiescent()
    assert chains(first.node) == chains(second.node) == chains(x) == chains(twin)
    for node in (first.node, second.node):
        [fork] = node.forks
        assert fork.origin == x.id and fork.seqno == 1  # where the branches split
        assert fork.kept == kept(fork.kept, fork.lost) and fork.kept != fork.lost
        assert chains(node)[x.id][1] == fork.kept
        evidence = cbor2.loads(fork.evidence)  # the other side's signed run, as received
        assert evidence["start"] <= 1 < evidence["start"] + len(evidence["bodies"])
    # every body reaches every member once: the losing one published again
    for m in (first, second):
        assert m.seen["one, here"] == m.seen["one, there"] == m.seen["zero"] == 1


def test_the_losing_note_is_kept_as_evidence_and_shown_where_it_was_delivered() -> None:
    x, twin = two_incarnations()
    m = Member(Node())
    sim = Sim(4)
    end = sim.connect_nodes(x, m.node)
    sim.run_until_quiescent()
    end.close()
    before = [(n.index, n.body) for n in m.node.notes()]
    sim.connect_nodes(twin, m.node)
    sim.run_until_quiescent()
    after = [(n.index, n.body) for n in m.node.notes()]
    assert after[: len(before)] == before  # what was delivered stays where it was
    assert sorted(b for _, b in after) == sorted(["zero", "one, here", "one, there"])
    assert len(m.node.forks) == 1
    report = m.node.fork_report()
    assert report[0]["seqno"] == 1 and report[0]["origin"] == x.id.hex()


def test_a_note_kept_off_the_chain_whose_bytes_changed_is_not_shown() -> None:
    """A note shown here before it left its chain is read from `dropped`; damage there is
    caught by the same hash-link check as on the chain, and counted."""
    for _ in range(100):  # the branch seen first must lose, to be shown from `dropped`
        x, twin = two_incarnations()
        here, there = chains(x)[x.id][1], chains(twin)[x.id][1]
        if kept(here, there) == there:
            break
    m = Member(Node())
    sim = Sim(4)
    end = sim.connect_nodes(x, m.node)
    sim.run_until_quiescent()
    end.close()
    sim.connect_nodes(twin, m.node)
    sim.run_until_quiescent()
    db = m.node._store._db  # the file's bytes changing under us, as a bit flip would
    (body,) = db.execute("SELECT body FROM dropped WHERE idx IS NOT NULL").fetchone()
    altered = body.replace("one", "ONE")
    db.execute("UPDATE dropped SET body = ?, shown = ? WHERE idx IS NOT NULL", (altered, altered))
    bodies = [n.body for n in m.node.notes()]
    assert altered not in bodies and body not in bodies
    assert body == "one, here" and sorted(bodies) == ["one, there", "zero"]
    assert m.node.store_status["damaged_off_chain"] == 1


def test_an_origin_whose_restored_branch_wins_gets_the_other_back_and_publishes_it_again(
) -> None:
    """The restored branch wins at the split (the rule favours neither): members that
    delivered the other branch hand it back to the origin, which publishes those bodies
    again; they deliver nothing twice, and a member that never saw that branch gets them."""
    live = Node()
    live.publish("zero")
    backup = live.pickle()
    live.publish("one, live")
    live.publish("two, live")
    for i in range(100):  # a restored note that wins at seqno 1
        restored = Node(backup)
        restored.publish(f"one, restored {i}")
        if kept(chains(restored)[live.id][1], chains(live)[live.id][1]) != chains(live)[live.id][1]:
            break
        restored.close()
    sim = Sim(5)
    holder = Member(Node())
    end = sim.connect_nodes(live, holder.node)
    sim.run_until_quiescent()
    end.close()
    live.close()
    me = Member(restored)
    newcomer = Member(Node())
    sim.connect_nodes(restored, holder.node)
    sim.run_until_quiescent()
    sim.connect_nodes(newcomer.node, holder.node)
    sim.run_until_quiescent()
    assert converged([me, holder, newcomer])
    bodies = {"zero", "one, live", "two, live", f"one, restored {i}"}
    for m in (me, holder, newcomer):
        assert dict(m.seen) == dict.fromkeys(bodies, 1), m.seen
    published_again = [n for n in restored.notes() if n.seqno >= 2]
    assert sorted(n.body for n in published_again) == ["one, live", "two, live"]
    [report] = holder.node.fork_report()
    assert report["seqno"] == 1 and report["published_again"] == 2
    assert report["again_seqnos"] == [2, 3]


def test_a_body_that_looks_published_again_is_refused_locally_and_opaque_from_a_peer() -> None:
    node = Node()
    with pytest.raises(LocalError):
        node.publish(AGAIN_PREFIX + b"x")
    assert carried(5, bytes(32), AGAIN_PREFIX + b"junk") is None
    assert carried(5, bytes(32), again(2, b"r" * 32, "hi")) == (b"r" * 32, 2, "hi")
    assert carried(2, bytes(32), again(2, b"r" * 32, "hi")) is None  # a root before itself


@pytest.mark.parametrize("flap", [False, True])
def test_a_long_losing_branch_is_handed_back_a_serving_step_at_a_time(flap: bool) -> None:
    """A member holding 3,000 notes of a branch that lost hands them back to their origin as
    serving goes: a step (`serve_step` bytes) at once, the rest at its next ticks, read from
    the store a page at a time. The origin still publishes every body again, once; also when
    the link drops after the first step (the hand-back then starts again after the notes
    already published again)."""
    rng = random.Random(11)
    for attempt in itertools.count():  # the restored branch must win: the live one is owed
        live = keyed(rng)
        live.publish("zero")
        backup = live.pickle()
        restored = Node(backup)
        restored.publish(f"one, restored {attempt}")
        live.publish_many([f"live {i}" for i in range(3000)])
        ids = chains(live)[live.id][1], chains(restored)[live.id][1]
        if kept(*ids) == ids[1]:
            break
        live.close()
        restored.close()
    holder = Member(Node(config=Config(serve_step=16 * 1024)))
    sim = Sim(6)
    end = sim.connect_nodes(live, holder.node)
    sim.run_until_quiescent()
    end.close()
    live.close()
    me = Member(restored)
    end = sim.connect_nodes(restored, holder.node)
    sim.run_until_quiescent()  # no tick yet: a step of the hand-back has gone
    first = restored.count
    assert first < 3002, "the whole branch went back at once"
    if flap:
        end.close()
        sim.connect_nodes(restored, holder.node)
    assert sim.run_until(lambda: restored.count == 3002 and converged([me, holder]),
                         timeout=60, tick=0.5)
    bodies = {"zero", f"one, restored {attempt}", *(f"live {i}" for i in range(3000))}
    for m in (me, holder):
        assert dict(m.seen) == dict.fromkeys(bodies, 1)
    print(f"\nafter the first step the origin held {first} of 3,002 notes")


def test_a_peer_claiming_notes_of_ours_it_never_sends_does_not_stop_healing() -> None:
    """Healing waits until we hold what peers hold of our log (else the bodies published
    again would land beside notes we lack), but not for a peer whose claim goes unanswered."""
    rng = random.Random(7)
    live = keyed(rng)
    live.publish("zero")
    backup = live.pickle()
    live.publish("one, live")
    for i in itertools.count():  # the live branch must win: the restored one heals
        restored = Node(backup)
        restored.publish(f"one, restored {i}")
        ids = chains(live)[live.id][1], chains(restored)[live.id][1]
        if kept(*ids) == ids[0]:
            break
        restored.close()
    liar = ManualChannel()
    restored.connect(liar)
    liar.feed(wire.encode(wire.Hello(wire.VERSION, b"", SigningKey().public,
                                     {live.id: 1000}, {}, (), True)))
    me = Member(restored)
    other = Member(Node())
    sim = Sim(7)
    sim.add(restored)
    end = sim.connect_nodes(live, other.node)
    sim.run_until_quiescent()
    end.close()
    sim.nodes.remove(live)
    live.close()  # the live machine is gone: only the restored one can heal
    sim.connect_nodes(restored, other.node)
    assert sim.run_until(lambda: chains(other.node) == chains(restored)
                         and other.seen[f"one, restored {i}"] == 1, timeout=30, tick=TICK)
    assert restored.heads[restored.id] == 3  # zero, one live, one restored published again
    assert me.seen == {"zero": 1, f"one, restored {i}": 1, "one, live": 1}
    assert other.seen == {"zero": 1, "one, live": 1, f"one, restored {i}": 1}


def test_a_lost_wal_then_an_offline_publish_heals(tmp: Path) -> None:
    """The notes still in the WAL are lost (node.db copied without its -wal while the node
    runs, as a machine that lost the file would reopen it), then the node publishes offline:
    the same fork as a restored backup, healed the same way."""
    rng = random.Random(11)
    path = tmp / "n.db"
    node = keyed(rng, path)
    node.publish("checkpointed")
    node.close()  # closing merges the WAL into node.db
    node = Node(path=str(path))
    peer = Member(keyed(rng))
    sim = Sim(11)
    end = sim.connect_nodes(node, peer.node)
    node.publish("only in the WAL")
    sim.run_until_quiescent()
    shutil.copy(path, tmp / "lost.db")  # node.db alone: what the WAL held is gone
    end.close()
    node.close()
    again_node = Node(path=str(tmp / "lost.db"))
    assert again_node.heads[again_node.id] == 1  # it lost its second note
    me = Member(again_node)
    again_node.publish("offline, after the loss")
    sim.connect_nodes(again_node, peer.node)
    sim.run_until_quiescent()
    assert chains(again_node) == chains(peer.node)
    bodies = {"checkpointed", "only in the WAL", "offline, after the loss"}
    assert dict(peer.seen) == dict.fromkeys(bodies, 1)
    assert dict(me.seen) == dict.fromkeys(bodies, 1)
    [fork] = again_node.forks
    assert fork.seqno == 1
