"""Member table benchmark: what the daemon's per-note subscriber costs, and what opening the
table costs on a long history, saved versus derived afresh.

    python tools/bench_members.py            # 1,000,000 notes
    python tools/bench_members.py --quick    # 100,000 notes

Figures, all from this one run:
  - per delivered note: `Members.see` against an empty handler (the floor), for text notes and
    for other apps' CBOR notes (which a name note could look like), as ns per note, the median
    of three rounds;
  - opening the table on a store of N notes: `Members.load` after a save (it replays only what
    arrived since) against a load with nothing saved (it replays the whole history once).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cbor2

from zflood.members import Members, name_note
from zflood.node import Node
from zflood.store import Note

GROUP = b"b" * 16


def per_note(notes: list[Note], handler: Callable[[Note], object]) -> float:
    """ns per note, the median of three rounds."""
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for note in notes:
            handler(note)
        rounds.append((time.perf_counter() - t0) / len(notes) * 1e9)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 notes")
    n = 100_000 if parser.parse_args().quick else 1_000_000
    origins = [bytes([i]) * 32 for i in range(8)]
    text = [Note(origins[i % 8], i // 8, f"note {i:>6} " + "x" * 88, b"", i) for i in range(n)]
    chat = cbor2.dumps({"app": "chat", "room": "zflood", "text": "x" * 80, "time": 1.0})
    apps = [Note(origins[i % 8], i // 8, chat, b"", i) for i in range(n)]
    print(f"per delivered note, {n:,} notes of 8 origins (median of 3 rounds):")
    floor = per_note(text, lambda note: None)
    for label, notes in (("text notes", text), ("chat notes (CBOR, 'zflood' inside)", apps)):
        members = Members()
        cost = per_note(notes, lambda note, m=members: m.see(note, 1.0))  # type: ignore[misc]
        print(f"  {label}: Members.see {cost:,.0f} ns, empty handler {floor:,.0f} ns "
              f"(+{cost - floor:,.0f} ns a note)")

    with tempfile.TemporaryDirectory(prefix="zflood-bench-members-") as tmp:
        node = Node(path=str(Path(tmp) / "node.db"), group=GROUP)
        node.publish(name_note("bench", 0.0))
        for i in range(0, n, 10_000):
            node.publish_many([f"note {j}" for j in range(i, i + 10_000)])
        t0 = time.perf_counter()
        members = Members.load(node, 1.0)  # nothing saved yet: the whole history, once
        fresh = time.perf_counter() - t0
        members.save(node)
        node.publish("one more")
        t0 = time.perf_counter()
        again = Members.load(node, 2.0)
        saved = time.perf_counter() - t0
        assert again.name(node.id) == "bench"
        node.close()
    print(f"opening the table on a store of {n + 2:,} notes: {saved * 1000:.2f} ms after a save "
          f"(one note to replay), {fresh * 1000:,.0f} ms with nothing saved (every note)")


if __name__ == "__main__":
    main()
