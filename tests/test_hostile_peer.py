"""The hostile peer of tools/bench_hostile.py still speaks the engine's protocol: an engine
takes its HELLO, stores the origins it pushes and answers its WANT, in memory (no sockets), so
a protocol change that would silently blunt the benchmark's attacks fails here instead."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from channels import ManualChannel

from zflood import Node, wire
from zflood.identity import Group, SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import hostile_peer  # a script beside the benchmark, not a package


def test_an_engine_takes_the_hostile_peers_hello_pushed_origins_and_want() -> None:
    group = Group.new()
    node = Node(group=group.id)
    node.publish("held")
    channel = ManualChannel()
    node.connect(channel)
    channel.feed(hostile_peer.hello_frame(group.id, SigningKey().public))
    for i in range(3):
        channel.feed(hostile_peer.signed_origin(f"origin {i}"))
    channel.feed(wire.encode(wire.Want(node.id, 0, 1)))
    assert not channel.closed
    assert len(node.heads) == 4 and node.count == 4
    served = [m for m in map(wire.decode, channel.sent) if isinstance(m, wire.Notes)]
    assert [(m.origin, m.start, m.bodies) for m in served] == [(node.id, 0, ("held",))]
    heads = wire.decode(hostile_peer.fake_heads(random.Random(8), 100))
    assert isinstance(heads, wire.Heads) and len(heads.heads) == 100
    node.close()
