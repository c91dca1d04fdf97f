"""`zflood demo`: nodes exchanging notes, a link cut and healed, told as it happens."""

from __future__ import annotations

from .node import Node
from .sim import Sim
from .store import Note


def simulated() -> int:
    """Three engines in the simulator (no sockets): a line a - b - c with 5 ms links."""
    sim = Sim(seed=1)
    names: dict[bytes, str] = {}
    nodes = {}
    for name in "abc":
        node = Node()
        names[node.id] = name
        nodes[name] = node

    def watcher(name: str):  # type: ignore[no-untyped-def]
        def handler(note: Note) -> None:
            if names[note.origin] != name:
                print(f"  {sim.now * 1000:6.1f} ms  {name} got {note.body!r} "
                      f"from {names[note.origin]}")
        return handler

    for name, node in nodes.items():
        node.subscribe(watcher(name))
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    print("linking a - b - c (5 ms each way)")
    sim.connect_nodes(a, b, latency=0.005)
    bc = sim.connect_nodes(b, c, latency=0.005)
    a.publish("hello from a")
    sim.run_until_quiescent()
    print("cutting b - c; a and c publish while apart")
    bc.close()
    a.publish("a, during the cut")
    c.publish("c, during the cut")
    sim.run_until_quiescent()
    print("healing b - c")
    sim.connect_nodes(b, c, latency=0.005)
    sim.run_until_quiescent()
    same = a.heads == b.heads == c.heads
    print(f"done: every node holds {a.count} notes; identical: {same}; "
          f"{sim.frames_sent} frames in all")
    return 0 if same else 1
