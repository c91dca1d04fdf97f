"""Bounded cost against real daemons: the attacker is tools/hostile_peer.py, a process of its
own holding the join code and speaking CurveZMQ, as in tools/bench_hostile.py (which runs the
same attacks bigger and prints what they cost). Every process is stopped by PID, bounded."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import ENV, WAIT, Daemons, daemons_fixture, member, tmp_fixture, wait_for

from zflood.config import DEFAULT
from zflood.identity import Group
from zflood.statedir import open_node

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import hostile_peer  # a script beside the benchmark, not a package

tmp = tmp_fixture("zh")
start = daemons_fixture()
PEER = Path(hostile_peer.__file__)


class Attacker:
    """tools/hostile_peer.py ACTION with `spec` on stdin, its events read by the tool's own
    `Events`."""

    def __init__(self, action: str, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PEER), action], env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()
        self.events = hostile_peer.Events(self.proc.stdout)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            line = self.events.wait(event, timeout)
        except TimeoutError:
            raise AssertionError(f"the attacker sent no {event!r} in {timeout} s") from None
        if line is None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise AssertionError(f"the attacker ended before {event!r}: {err}")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.events.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def attackers() -> Iterator[list[Attacker]]:
    started: list[Attacker] = []
    yield started
    for a in started:
        a.stop()


def test_a_member_that_asks_for_everything_and_reads_nothing_costs_a_bounded_backlog(
    tmp: Path, start: Daemons, attackers: list[Attacker],
) -> None:
    """Issue 8, item 2: the victim's whole log (30 MB) asked for in distinct ranges, again
    every second, by a member that reads nothing for 3 s. ZeroMQ holds at most about
    peer_backlog for it meanwhile (the rest waits as ranges), an honest member's notes still
    cross both ways, and once the attacker reads it gets every note."""
    code = member(tmp / "a")
    member(tmp / "b", code)
    group = Group.from_join_code(code)
    notes, body = 30_000, 1000
    node = open_node(tmp / "a", group)
    node.publish_many([f"{i:>{body}}" for i in range(notes)])
    node.close()
    a = start(tmp / "a")
    b = start(tmp / "b", a.listen)
    wait_for(lambda: a.linked() == {b.node} and notes <= b.client.status()["notes"],
             60, "B to link to A and take A's notes")
    spec = {"code": code, "victim": a.listen, "origin": a.node, "end": notes,
            "step": DEFAULT.batch_notes, "reask": 1.0, "stall": 3.0, "rcvhwm": 16,
            "seconds": 8.0}
    attacker = Attacker("backlog", spec)
    attackers.append(attacker)
    attacker.wait("ready", WAIT)
    bound = DEFAULT.peer_backlog + DEFAULT.serve_step + DEFAULT.max_frame
    held, waits, i = 0, 0, 0
    t_end = time.monotonic() + 2.5  # inside the stall
    while time.monotonic() < t_end:
        status = a.client.status()
        held = max(held, status["mesh"]["held_bytes"])
        waits = status["serve"]["backlog_waits"]
        i += 1
        for src, dst in ((a, b), (b, a)):
            note = f"honest {i} from {src.node[:8]}"
            src.client.publish(note)
            wait_for(functools.partial(dst.has, note), WAIT, f"{note!r} during the attack")
    print(f"\nA held at most {held:,} bytes for the attacker (bound {bound:,}); "
          f"{waits} serve steps held back")
    assert waits > 0, "the attacker was never held back: the test did not test the bound"
    assert 0 < held <= bound
    done = attacker.wait("done", 15)
    print(f"the attacker sent {done['bytes_out']:,} B of WANTs, got {done['bytes_in']:,} B")
    assert done["bytes_in"] >= notes * body  # once it read, every range was served
    assert "Traceback" not in a.log.read_text()
