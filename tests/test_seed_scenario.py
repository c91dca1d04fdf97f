"""The seed's regression scenario (DESIGN.md), step by step, plus what its test left out:
the handler learns origin and seqno, and nobody sees a note twice."""

from __future__ import annotations

from zflood import Node, Note
from zflood.sim import Sim


class Seen:
    def __init__(self) -> None:
        self.notes: list[Note] = []

    def __call__(self, note: Note) -> None:
        self.notes.append(note)

    @property
    def bodies(self) -> set[str | bytes]:
        return {n.body for n in self.notes}

    def assert_once(self) -> None:
        keys = [(n.origin, n.seqno) for n in self.notes]
        assert len(keys) == len(set(keys)), "a subscriber saw a note twice"


def test_seed_regression_scenario(ed25519_backend: str) -> None:
    aa, bb = Node(), Node()
    aa_seen = Seen()
    aa.subscribe(aa_seen)
    assert aa_seen.bodies == set()
    aa.publish("hi")
    assert aa_seen.bodies == {"hi"}
    aa.publish("bye")
    assert aa_seen.bodies == {"hi", "bye"}

    bb_seen = Seen()
    bb.subscribe(bb_seen)
    assert bb_seen.bodies == set()

    sim = Sim()
    sim.connect_nodes(aa, bb)
    sim.run_until_quiescent()
    assert aa_seen.bodies == bb_seen.bodies == {"hi", "bye"}

    aa.publish("new")
    sim.run_until_quiescent()
    assert bb_seen.bodies == {"hi", "bye", "new"}
    bb.publish("2")
    sim.run_until_quiescent()
    assert aa_seen.bodies == {"2", "hi", "bye", "new"}

    cc = Node()
    cc.publish("3")
    bc = sim.connect_nodes(bb, cc)
    sim.run_until_quiescent()
    assert "3" in aa_seen.bodies and "3" in bb_seen.bodies

    cc_seen = Seen()
    cc.subscribe(cc_seen)  # late: replays all five
    assert cc_seen.bodies == {"2", "hi", "bye", "new", "3"}

    ac = sim.connect_nodes(aa, cc)  # a cycle
    sim.run_until_quiescent()
    cc.publish("5")
    assert "5" not in aa_seen.bodies
    sim.run_until_quiescent()
    assert all("5" in s.bodies for s in (aa_seen, bb_seen, cc_seen))

    ac.close()  # break the loop: still works through bb
    cc.publish("postcut")
    sim.run_until_quiescent()
    assert "postcut" in aa_seen.bodies

    bc.close()  # cc cut off entirely
    cc.publish("postcutc")
    sim.run_until_quiescent()
    assert "postcutc" in cc_seen.bodies and "postcutc" not in aa_seen.bodies
    bb.publish("postcutb")
    sim.run_until_quiescent()
    assert "postcutb" in bb_seen.bodies and "postcutb" in aa_seen.bodies
    assert "postcutb" not in cc_seen.bodies

    bc = sim.connect_nodes(bb, cc)  # reconnect: both cross
    sim.run_until_quiescent()
    assert "postcutc" in aa_seen.bodies and "postcutb" in cc_seen.bodies

    pickled = cc.pickle()  # a new incarnation of cc
    bc.close()
    sim.run_until_quiescent()
    old_cc_id = cc.id
    cc.close()
    cc = Node(pickled)
    assert cc.id == old_cc_id
    cc_seen = Seen()
    cc.subscribe(cc_seen)
    assert {"postcutc", "postcutb"} <= cc_seen.bodies
    cc.publish("lazarus")
    assert "lazarus" in cc_seen.bodies and "lazarus" not in bb_seen.bodies

    sim.connect_nodes(bb, cc)
    sim.run_until_quiescent()
    assert "lazarus" in bb_seen.bodies
    cc.publish("cyrus")
    sim.run_until_quiescent()
    assert "cyrus" in bb_seen.bodies
    aa.publish("welcome")
    sim.run_until_quiescent()
    assert "welcome" in cc_seen.bodies

    everything = {"hi", "bye", "new", "2", "3", "5", "postcut", "postcutc", "postcutb",
                  "lazarus", "cyrus", "welcome"}
    for s in (aa_seen, bb_seen, cc_seen):
        assert s.bodies == everything
        s.assert_once()
    assert aa.heads == bb.heads == cc.heads


def test_handler_learns_origin_and_seqno_in_order() -> None:
    aa, bb = Node(), Node()
    for i in range(5):
        aa.publish(f"n{i}")
    seen = Seen()
    bb.subscribe(seen)
    sim = Sim()
    sim.connect_nodes(aa, bb)
    sim.run_until_quiescent()
    assert [(n.origin, n.seqno, n.body) for n in seen.notes] == [
        (aa.id, i, f"n{i}") for i in range(5)
    ]
