"""The store on real SQLite files: arrival-order replay merged from the origins' logs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from zflood.store import Store

ORIGINS = [bytes([i]) * 32 for i in range(4)]


def fill(store: Store, arrivals: list[tuple[int, int]]) -> list[tuple[bytes, int, int]]:
    """Append runs (origin number, length) in order; returns (origin, seqno, index) of each
    note as a model of what replay must give."""
    model = []
    counts = [0] * len(ORIGINS)
    for o, n in arrivals:
        origin, start = ORIGINS[o], counts[o]
        rows = [(bytes(32), None, f"{o}:{start + i}") for i in range(n)]
        first = store.append(origin, start, rows)
        model += [(origin, start + i, first + i) for i in range(n)]
        counts[o] += n
    return model


runs = st.lists(st.tuples(st.integers(0, len(ORIGINS) - 1), st.integers(1, 5)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(arrivals=runs, bounds=st.tuples(st.integers(0, 160), st.integers(0, 160)),
       chunk=st.integers(1, 40))
def test_replay_is_arrival_order_for_any_range_and_chunk(
    arrivals: list[tuple[int, int]], bounds: tuple[int, int], chunk: int
) -> None:
    store = Store()
    model = fill(store, arrivals)
    start, end = bounds
    got = [(n.origin, n.seqno, n.index) for n in store.replay(start, end, chunk=chunk)]
    assert got == [m for m in model if start <= m[2] < end]
    assert [n.body for n in store.replay(start, end, chunk=chunk)] == [
        f"{ORIGINS.index(o)}:{s}" for o, s, i in model if start <= i < end
    ]
    assert store.next_index == len(model)


def test_reopened_store_knows_its_heads_and_next_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    model = fill(store, [(0, 3), (1, 2), (0, 1), (2, 4)])
    heads = store.heads()
    store.close()
    again = Store(path)
    assert again.next_index == len(model) == 10
    assert again.heads() == heads
    assert again.heads()[ORIGINS[0]][0] == 4
    assert [(n.origin, n.seqno, n.index) for n in again.replay(5)] == model[5:]
    again.close()


def test_a_store_with_the_old_arrival_index_opens_and_loses_only_the_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    store = Store(path)
    model = fill(store, [(0, 2), (1, 2), (0, 2)])
    store.close()
    db = sqlite3.connect(path)
    db.execute("CREATE UNIQUE INDEX notes_by_idx ON notes (idx)")  # the earlier layout
    db.close()
    again = Store(path)
    names = [r[0] for r in again._db.execute("SELECT name FROM sqlite_master")]
    assert "notes_by_idx" not in names
    assert [(n.origin, n.seqno, n.index) for n in again.replay()] == model
    again.close()
