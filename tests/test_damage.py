"""A damaged store: never delivered or served altered, reported, repaired from a peer.

Real SQLite files are damaged by flipping bits in a copy; apps read through `notes()` and
`subscribe` (what the local API serves from) and a peer syncs from the damaged node.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from zflood import LocalError, Node
from zflood.errors import StoreDamaged
from zflood.sim import Sim
from zflood.store import Note

SEED = 9
Original = dict[tuple[bytes, int], object]


def make_store(path: Path) -> tuple[Original, Node]:
    """A store holding its own notes and a peer's (relayed, so signatures are stored); the
    peer (in memory) is returned, still holding everything, to repair from."""
    a, b = Node(path=str(path)), Node()
    sim = Sim()
    sim.connect_nodes(a, b)
    for i in range(120):
        a.publish(f"hello world {i} " + "a" * (i % 50))
        if i % 3 == 0:
            b.publish_many([f"from b {i}", bytes([i]) * 40])
        sim.run_until_quiescent()
    original: Original = {(n.origin, n.seqno): n.body for n in a.notes()}
    assert len(original) == 200
    a.close()
    return original, b


def flip(path: Path, rng: random.Random, where: tuple[int, int] | None = None) -> int:
    data = bytearray(path.read_bytes())
    lo, hi = where or (0, len(data))
    pos = rng.randrange(lo, hi)
    data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return pos


def read_everything(path: Path) -> tuple[list[Note], list[Note], Node | None, Node | None]:
    """What apps and a fresh peer get from the store at `path`: (notes(), subscribe, peer,
    node). A store that refuses to open gives nothing, with a LocalError."""
    try:
        node = Node(path=str(path))
    except LocalError:
        return [], [], None, None
    got: list[Note] = []
    try:
        listed = list(node.notes())
        node.subscribe(got.append)
    except StoreDamaged:
        listed = []
    peer = Node()
    sim = Sim()
    sim.connect_nodes(node, peer)
    sim.run_until_quiescent()
    sim.run(10.0, tick=0.5)  # what ticks do with it too (repairs asked of a peer lacking it)
    return listed, got, peer, node


def test_over_100_random_bit_flips_no_altered_body_reaches_an_app_or_a_peer(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.db"
    original, _ = make_store(good)
    data = good.read_bytes()
    # where notes are: a body's text and the id, signature and record header around it
    notes = [i for text in (b"hello world", b"from b") for i in _find_all(data, text)]
    rng = random.Random(SEED)
    damaged_found = refused = 0
    for trial in range(120):
        copy = tmp_path / f"flip{trial}.db"
        shutil.copyfile(good, copy)
        # half anywhere in the file (most of it is B-tree structure and free space), half
        # within a note
        at = rng.choice(notes)
        pos = flip(copy, rng, None if trial % 2 else (max(0, at - 40), at + 30))
        listed, got, peer, node = read_everything(copy)
        context = f"seed {SEED}, trial {trial}, byte {pos}"
        if node is None:
            refused += 1
            continue
        for note in [*listed, *got, *(peer.notes() if peer else [])]:
            assert original.get((note.origin, note.seqno)) == note.body, context
        assert node.stats.channels_closed_on_error == 0, context  # never the peer's fault
        damaged_found += bool(node.store_status["damaged"])
        node.close()
        assert peer is not None
        peer.close()
    # the flips within notes were found
    assert damaged_found >= 40, (damaged_found, refused)


def _find_all(data: bytes, text: bytes) -> list[int]:
    found, at = [], data.find(text)
    while at >= 0:
        found.append(at)
        at = data.find(text, at + 1)
    return found


def test_a_damaged_note_is_left_out_reported_and_fetched_again_from_a_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.db"
    original, b = make_store(path)
    data = bytearray(path.read_bytes())
    for text in (b"hello world 17 ", b"from b 33"):  # one of our own notes, one of b's
        pos = data.index(text)
        data[pos] ^= 0x02  # 'h' -> 'j', 'f' -> 'd'
    path.write_bytes(bytes(data))
    a = Node(path=str(path))
    bodies = [n.body for n in a.notes()]
    assert len(bodies) == 198
    assert not any(isinstance(x, str) and x.startswith(("jello", "drom")) for x in bodies)
    assert sum(a.store_status["damaged"].values()) == 2  # type: ignore[attr-defined]
    assert "fails its hash link" in caplog.text
    got: list[Note] = []
    a.subscribe(got.append, start=a.count)  # an app following live
    sim = Sim()
    sim.connect_nodes(a, b)
    assert sim.run_until(lambda: not a.store_status["damaged"], timeout=30, tick=0.5)
    assert {(n.origin, n.seqno): n.body for n in a.notes()} == original
    assert sorted(n.body for n in got if isinstance(n.body, str)) == [
        "from b 33", "hello world 17 " + "a" * 17]
    assert a.stats.channels_closed_on_error == 0 and b.stats.channels_closed_on_error == 0
    a.close()
    again = Node(path=str(path))  # the repair is on disk
    assert {(n.origin, n.seqno): n.body for n in again.notes()} == original
    again.close()


def test_a_damaged_note_is_not_served_and_the_peer_is_not_blamed(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    original, _ = make_store(path)
    data = bytearray(path.read_bytes())
    data[data.index(b"hello world 50 ")] ^= 0x02
    path.write_bytes(bytes(data))
    a, fresh = Node(path=str(path)), Node()
    sim = Sim()
    sim.connect_nodes(a, fresh)
    sim.run(10.0, tick=0.5)
    held = {(n.origin, n.seqno): n.body for n in fresh.notes()}
    assert held and all(original[k] == v for k, v in held.items())
    assert (a.id, 50) not in held
    assert a.stats.channels_closed_on_error == 0 and fresh.stats.channels_closed_on_error == 0
    a.close()


def test_a_note_whose_row_is_gone_is_put_back_at_its_old_index(tmp_path: Path) -> None:
    """A row lost whole (or its arrival index): the note is fetched again and gets back the
    one index its neighbours leave free, so the log reads as it did, in the same order."""
    path = tmp_path / "a.db"
    original, b = make_store(path)
    a = Node(path=str(path))
    order = [(n.origin, n.seqno, n.index) for n in a.notes()]
    a_own, b_own = a.id, next(o for o in a.heads if o != a.id)
    a.close()
    db = sqlite3.connect(path)
    (no_a,) = db.execute("SELECT no FROM origins WHERE origin = ?", (a_own,)).fetchone()
    (no_b,) = db.execute("SELECT no FROM origins WHERE origin = ?", (b_own,)).fetchone()
    db.execute("DELETE FROM log WHERE k = ?", (no_a << 40 | 50,))  # a row gone
    db.execute("UPDATE log SET idx = 'x' WHERE k = ?", (no_b << 40 | 7,))  # an index gone
    db.commit()
    db.close()
    a = Node(path=str(path))
    # the note after the lost row is left out too: its link can no longer be checked
    assert len(list(a.notes())) == 197
    sim = Sim()
    sim.connect_nodes(a, b)
    assert sim.run_until(lambda: not a.store_status["damaged"], timeout=30, tick=0.5)
    assert [(n.origin, n.seqno, n.index) for n in a.notes()] == order
    assert {(n.origin, n.seqno): n.body for n in a.notes()} == original
    assert a.stats.channels_closed_on_error == 0
    a.close()


def test_a_damaged_key_of_the_last_note_does_not_make_the_log_look_longer(
    tmp_path: Path,
) -> None:
    """A bit flipped in the key of an origin's last row would put it far past the rest:
    the origin would look longer than it is, and its own next note would be published past
    a hole. At open the row is found to be the note after the gap and moved back."""
    path = tmp_path / "a.db"
    node = Node(path=str(path))
    for i in range(10):
        node.publish(f"note {i}")
    me = node.id
    node.close()
    db = sqlite3.connect(path)
    (no,) = db.execute("SELECT no FROM origins WHERE origin = ?", (me,)).fetchone()
    db.execute("UPDATE log SET k = ? WHERE k = ?", (no << 40 | (9 + 4096), no << 40 | 9))
    db.commit()
    db.close()
    node = Node(path=str(path))
    assert node.count == 10 and node.heads[me] == 10
    node.publish("note 10")
    assert [n.body for n in node.notes()] == [f"note {i}" for i in range(11)]
    peer = Node()
    sim = Sim()
    sim.connect_nodes(node, peer)
    sim.run_until_quiescent()
    assert [n.body for n in peer.notes()] == [f"note {i}" for i in range(11)]
    node.close()


def test_notes_lost_in_two_origins_come_back_in_place_and_reach_a_subscriber(
    tmp_path: Path,
) -> None:
    """A row lost in each of two origins (one relayed, so the note after it keeps its stored
    signature): both are fetched again and put back at their old indices, and a subscriber
    gets every note, the one after each lost row included."""
    path = tmp_path / "a.db"
    a, b, c = Node(path=str(path)), Node(), Node()
    sim = Sim()
    sim.connect_nodes(a, b)
    sim.connect_nodes(a, c)
    for i in range(30):
        a.publish(f"a {i}")
        if i % 2 == 0:
            b.publish(f"b {i}")
        if i % 3 == 0:
            c.publish_many([f"c {i}", f"c {i}x"])
        sim.run_until_quiescent()
    order = [(n.origin, n.seqno, n.index) for n in a.notes()]
    ids = {"a": a.id, "b": b.id}
    a.close()
    db = sqlite3.connect(path)
    for who, seqno in (("b", 2), ("a", 7)):
        (no,) = db.execute("SELECT no FROM origins WHERE origin = ?", (ids[who],)).fetchone()
        db.execute("DELETE FROM log WHERE k = ?", (no << 40 | seqno,))
    db.commit()
    db.close()
    a = Node(path=str(path))
    got: list[Note] = []
    a.subscribe(got.append)
    sim = Sim()
    sim.connect_nodes(a, c)  # c holds a's and b's notes too
    assert sim.run_until(lambda: not a.store_status["damaged"], timeout=30, tick=0.5)
    assert [(n.origin, n.seqno, n.index) for n in a.notes()] == order
    assert {(n.origin, n.seqno) for n in got} == {(o, s) for o, s, _ in order}
    assert not a._store.unrepairable
    a.close()
