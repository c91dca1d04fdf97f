"""Property tests: whatever the topology, churn, partitions, restarts and frame loss, every
node ends with every note, per origin in order, and no subscriber sees a note twice."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from zflood import Node, Note
from zflood.sim import Sim, SimChannel

TICK = 0.5


class Member:
    """A node, its subscriber, and (when durable) the path it restarts from."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.node = Node(path=str(path) if path else None)
        self.seen: list[Note] = []
        self.node.subscribe(self.seen.append)

    def restart(self) -> None:
        assert self.path is not None
        self.node.close()
        self.node = Node(path=str(self.path))
        self.seen = []
        self.node.subscribe(self.seen.append)

    def check(self, everything: set[tuple[bytes, int]]) -> None:
        keys = [(n.origin, n.seqno) for n in self.seen]
        assert len(keys) == len(set(keys)), "a subscriber saw a note twice"
        assert set(keys) == everything
        last: dict[bytes, int] = {}
        for origin, seqno in keys:
            assert seqno == last.get(origin, -1) + 1, "notes of an origin arrived out of order"
            last[origin] = seqno


ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 4), st.integers(1, 3)),
        st.tuples(st.just("connect"), st.integers(0, 4), st.integers(0, 4),
                  st.sampled_from([0.0, 0.0, 0.1, 0.3])),
        st.tuples(st.just("close"), st.integers(0, 30)),
        st.tuples(st.just("partition"), st.integers(1, 4)),
        st.tuples(st.just("heal"),),
        st.tuples(st.just("restart"), st.integers(0, 4)),
        st.tuples(st.just("run"), st.floats(0.0, 5.0)),
    ),
    max_size=30,
)


EXAMPLES = int(os.environ.get("ZFLOOD_EXAMPLES", "60"))  # raise it to search harder


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 5), durable=st.booleans(), seed=st.integers(0, 2**32), program=ops)
def test_every_note_reaches_every_node_once_in_order(
    n: int, durable: bool, seed: int, program: list[tuple[Any, ...]]
) -> None:
    note(f"sim seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        members = [Member(Path(tmp) / f"n{i}.db" if durable else None) for i in range(n)]
        sim = Sim(seed)
        for m in members:
            sim.add(m.node)
        ends: list[tuple[SimChannel, Member, Member]] = []
        counter = itertools.count()

        def connect(a: Member, b: Member, loss: float) -> None:
            end = sim.connect_nodes(a.node, b.node, latency=(0.001, 0.05), loss=loss)
            ends.append((end, a, b))

        for op in program:
            kind = op[0]
            if kind == "publish":
                m = members[op[1] % n]
                for _ in range(op[2]):
                    m.node.publish(f"note {next(counter)}")
            elif kind == "connect" and op[1] % n != op[2] % n:
                connect(members[op[1] % n], members[op[2] % n], op[3])
            elif kind == "close" and ends:
                ends[op[1] % len(ends)][0].close()
            elif kind == "partition":
                cut = op[1] % n or 1
                sim.partition([m.node for m in members[:cut]], [m.node for m in members[cut:]])
            elif kind == "heal":
                sim.heal()
            elif kind == "restart" and durable:
                m = members[op[1] % n]
                for end, a, b in ends:
                    if m in (a, b):
                        end.close()
                sim.nodes.remove(m.node)
                m.restart()
                sim.add(m.node)
            elif kind == "run":
                sim.run(op[1], tick=TICK)

        # Finally: heal, and link the members in a line over lossy links.
        sim.heal()
        for a, b in itertools.pairwise(members):
            connect(a, b, 0.2)
        everything = {
            (m.node.id, s) for m in members for s in range(m.node.heads.get(m.node.id, 0))
        }
        converged = sim.run_until(
            lambda: all(len(m.seen) == len(everything) for m in members), timeout=300, tick=TICK
        )
        assert converged, f"not converged after 300 simulated seconds (sim seed {seed})"
        for m in members:
            m.check(everything)
            assert m.node.forks == []
        for m in members:
            m.node.close()
