"""Crash safety with real processes: kill -9 a publishing process at random moments. Every
note whose publish() returned is there after reopening, and the store opens every time."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from zflood import Node

PUBLISHER = """
import sys
from zflood import Node
node = Node(path=sys.argv[1])
while True:
    note = node.publish(f"note {node.heads.get(node.id, 0)}")
    sys.stdout.write(f"{note.seqno}\\n")
    sys.stdout.flush()
"""
SEED = 424242


def test_kill_9_loses_no_acknowledged_note(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "crash.db"
    acked: set[int] = set()
    for round_ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            for _ in range(rng.randint(1, 3000)):
                line = proc.stdout.readline()
                assert line, f"publisher died early (seed {SEED}, round {round_})"
                acked.add(int(line))
            proc.kill()  # SIGKILL at a random point of its loop
            proc.wait(timeout=10)
            rest = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        acked.update(int(x) for x in rest.split("\n")[:-1])  # a cut-off last line is not acked
        node = Node(path=str(path))
        held = {n.seqno: n.body for n in node.notes()}
        missing = acked - held.keys()
        assert not missing, f"acknowledged notes lost: {sorted(missing)[:10]} (seed {SEED})"
        assert all(held[s] == f"note {s}" for s in acked)
        assert sorted(held) == list(range(len(held))), "a hole in the log"
        node.close()
    assert len(acked) > 8
