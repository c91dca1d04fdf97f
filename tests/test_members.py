"""Member names and the member table (zflood.members), sync figures (zflood.progress): engines
in the simulator and real SQLite stores, no sockets."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zflood import Node
from zflood.errors import LocalError
from zflood.members import MAX_NAME, Members, check_name, name_note, parse_name, short
from zflood.progress import Progress, Report, duration, gaps, lacking
from zflood.sim import Sim
from zflood.status import node_status, peer_rows

GROUP = b"g" * 16


def linked(*nodes: Node) -> Sim:
    sim = Sim(seed=1)
    for a, b in itertools.pairwise(nodes):
        sim.connect_nodes(a, b)
    sim.run_until_quiescent()
    return sim


def test_every_member_agrees_on_each_name_and_the_latest_seqno_wins() -> None:
    a, b, c = (Node(group=GROUP) for _ in range(3))
    a.publish(name_note("first", 1.0))
    a.publish("chatter")
    a.publish(name_note("second", 2.0))
    b.publish(name_note("bee", 1.0))
    linked(a, b, c)
    tables = []
    for node in (a, b, c):
        members = Members()
        for note in node.notes():
            members.see(note, 100.0)
        tables.append(members.names())
    assert tables[0] == tables[1] == tables[2] == {a.id.hex(): "second", b.id.hex(): "bee"}


def test_an_older_name_note_arriving_late_does_not_win() -> None:
    a = Node(group=GROUP)
    old = a.publish(name_note("old", 1.0))
    new = a.publish(name_note("new", 2.0))
    members = Members()
    assert members.see(new, 5.0) == "new"
    assert members.see(old, 6.0) is None
    assert members.name(a.id) == "new"


def test_a_name_note_names_only_its_own_origin() -> None:
    """Whatever a note says, it names the origin that signed it: a relay cannot alter that
    (the engine refuses altered notes), and a member naming another names itself."""
    a, b = Node(group=GROUP), Node(group=GROUP)
    body = cbor2.dumps({"app": "zflood", "name": "boss", "origin": a.id})
    b.publish(body)
    linked(a, b)
    members = Members()
    for note in a.notes():
        members.see(note, 1.0)
    assert members.name(b.id) == "boss" and members.name(a.id) is None


@pytest.mark.parametrize("body", [
    "text that says zflood",
    cbor2.dumps({"app": "chat", "name": "x"}),
    cbor2.dumps({"app": "zflood", "name": 7}),
    cbor2.dumps({"app": "zflood", "name": "bad\nname"}),
    cbor2.dumps({"app": "zflood", "name": "x" * (MAX_NAME + 1)}),
    cbor2.dumps({"app": "zflood", "name": ""}),
    cbor2.dumps(["zflood", "name"]),
    b"\xa2\x63app\x66zflood",  # a map header and the words, not a whole map
    cbor2.dumps({"app": "zflood", "name": "ok", "pad": "zflood" * 300}),  # too large
    cbor2.dumps({"app": "zflood", "name": "ok"}) + b"\x00",  # something after the map
    b"",
], ids=range(11))
def test_what_is_not_a_valid_name_note_names_nobody(body: str | bytes) -> None:
    assert parse_name(body) is None


def test_names_are_checked_and_trimmed() -> None:
    assert check_name("  laptop  ") == "laptop"
    assert parse_name(name_note("Café ☕", 0.0)) == "Café ☕"
    for bad in ["", "   ", "a\tb", "x" * (MAX_NAME + 1), "left\u202eright"]:
        with pytest.raises(LocalError):
            check_name(bad)
    assert short(b"\x1a\x2b\x3c\x4d" + bytes(28)) == "1a2b3c4d"


def test_the_table_is_saved_and_loading_reads_only_what_arrived_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "node.db")
    node = Node(path=path, group=GROUP)
    node.publish(name_note("desk", 1.0))
    for i in range(50):
        node.publish(f"note {i}")
    members = Members.load(node, 10.0)
    assert members.name(node.id) == "desk" and members.next == 51
    members.save(node)
    node.publish("after the save")
    node.close()

    node = Node(path=path, group=GROUP)
    starts: list[int] = []
    real = node.notes

    def notes(start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
        starts.append(start)
        return real(start, end)

    monkeypatch.setattr(node, "notes", notes)
    again = Members.load(node, 20.0)
    assert starts == [51], "the load replayed more than what arrived after the save"
    assert again.name(node.id) == "desk"
    assert again.get(node.id).last_at == 20.0  # the note after the save, seen at load
    assert again.next == 52
    node.close()


def test_a_table_of_many_origins_is_saved_in_bounded_rounds(tmp_path: Path) -> None:
    """A save writes at most `most` rows; the index the table is whole up to is written only
    once a round is done, so a store opened half-way replays what the missing rows hold."""
    path = str(tmp_path / "node.db")
    node = Node(path=path, group=GROUP)
    others = [Node(group=GROUP) for _ in range(5)]
    for i, other in enumerate(others):
        other.publish(name_note(f"m{i}", 1.0))
        node.import_notes(next(other.export()))
    members = Members.load(node, 10.0)
    assert members.next == 5
    writes: list[int] = []
    real = node.set_meta_many

    def counted(items: dict[str, Any]) -> None:
        writes.append(len(items))
        real(items)

    node.set_meta_many = counted  # type: ignore[method-assign]
    assert members.save(node, 2) is False
    assert node.get_meta("members/next") in (None, 0)  # the round is not whole yet
    half = Members.load(node, 20.0)  # as a restart now would
    assert [half.name(o.id) for o in others] == [f"m{i}" for i in range(5)]
    assert members.save(node, 2) is False and members.save(node, 2) is True
    assert writes == [2, 2, 2]  # two rows, two rows, the last row with the index
    again = Members.load(node, 30.0)
    assert again.next == 5 and [again.name(o.id) for o in others] == [f"m{i}" for i in range(5)]
    assert members.save(node, 2) is True and writes == [2, 2, 2]  # nothing changed
    node.close()


def test_a_damaged_saved_row_rebuilds_the_table_from_the_notes(tmp_path: Path) -> None:
    node = Node(path=str(tmp_path / "node.db"), group=GROUP)
    node.publish(name_note("desk", 1.0))
    Members.load(node, 1.0).save(node)
    node.set_meta("member/" + node.id.hex(), b"\xff not cbor")
    assert Members.load(node, 2.0).name(node.id) == "desk"
    with pytest.raises(LocalError):
        node.set_meta("seed", b"x")  # the engine's own keys are not for the table
    node.close()


def test_gaps_count_what_each_side_lacks() -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    ours = {a: 10, b: 3}
    theirs = {a: 4, b: 5, c: 2}
    assert gaps(ours, theirs) == (6, 4)
    assert gaps(ours, ours) == (0, 0)
    # from two peers: the most either holds of each origin, beyond ours
    assert lacking(ours, [theirs, {b: 9}]) == 6 + 2
    assert lacking(ours, []) == 0


def test_progress_gives_rate_and_time_left() -> None:
    p = Progress(window=10.0)
    assert p.report(0, 100).rate is None and p.report(0, 100).eta is None
    for t in range(0, 21):
        p.sample(float(t), t * 1000)
    r = p.report(20_000, 50_000)
    assert r.rate == pytest.approx(1000.0)
    assert r.eta == pytest.approx(50.0)
    assert "50,000 notes to go" in r.line() and "1,000 notes/s" in r.line()
    assert "about 50 s left" in r.line()
    assert Report(5, 0, None, None).line().startswith("in sync")
    carried: dict[str, Any] = r.as_dict()
    assert Report(**carried) == r  # what status carries reads back


@pytest.mark.parametrize(("seconds", "text"), [
    (0.42, "0.4 s"), (12, "12 s"), (185, "3 min 05 s"), (7620, "2 h 07 min"),
    (3 * 86400 + 4 * 3600, "3 d 4 h"),
])
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@given(st.binary(max_size=200))
def test_no_body_makes_the_name_parser_raise(data: bytes) -> None:
    for body in (data, b"\xa2" + data + b"\x63app\x66zflood", b"\xbf\x63app\x66zflood" + data):
        name = parse_name(body)
        assert name is None or name == check_name(name)


def test_peer_rows_carry_name_times_and_what_each_side_lacks() -> None:
    a, b = b"a" * 32, b"b" * 32
    members = Members()
    node = Node(group=GROUP)
    members.see(node.publish(name_note("here", 0.0)), 1.0)
    links: list[dict[str, Any]] = [
        {"node": node.id.hex(), "address": "tcp://10.0.0.2:4077", "state": "connected",
         "since": 30.0, "heard": 0.5},
        {"node": b.hex(), "address": "tcp://10.0.0.3:4077", "state": "connecting",
         "since": 12.0, "heard": None},
        {"node": "", "address": "tcp://10.0.0.4:4077", "state": "dialling",
         "since": None, "heard": None},
    ]
    engine: list[dict[str, Any]] = [{"node": node.id, "ready": True, "heads": {a: 2, node.id: 1}},
              {"node": b, "ready": False, "heads": {}}]
    rows = peer_rows(links, engine, {a: 5}, members, wall=1000.0)
    assert [(r["name"], r["since"], r["heard"], r["they_lack"], r["we_lack"]) for r in rows] == [
        ("here", 970.0, 999.5, 3, 1),
        (None, 988.0, None, None, None),  # no engine link: nothing known of its heads
        (None, None, None, None, None),
    ]


def test_status_lists_this_node_and_named_members_first_within_its_limit() -> None:
    nodes = [Node(group=GROUP) for _ in range(5)]
    nodes[3].publish(name_note("named", 0.0))
    for n in nodes:
        n.publish("hello")
    linked(*nodes)
    members = Members()
    for note in nodes[0].notes():
        members.see(note, 1.0)
    st = node_status(nodes[0], members, limit=2)
    assert [m["origin"] for m in st["members"]] == [nodes[0].id.hex(), nodes[3].id.hex()]
    assert st["members"][1]["name"] == "named" and st["members_left_out"] == 3
    assert len(node_status(nodes[0], members)["members"]) == 5  # no limit: every origin
