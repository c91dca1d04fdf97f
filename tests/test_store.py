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


def test_replay_gives_what_was_held_when_it_was_called_even_while_notes_arrive() -> None:
    store = Store()
    model = fill(store, [(0, 1), (1, 20)])
    got = []
    for note in store.replay(0, 100, chunk=32):
        if note.index == 0:  # a new origin's first note, then one more of a running origin
            store.append(ORIGINS[2], 0, [(bytes(32), None, "late")])
            store.append(ORIGINS[1], 20, [(bytes(32), None, "later")])
        got.append((note.origin, note.seqno, note.index))
    assert got == model
    assert [n.body for n in store.replay(21)] == ["late", "later"]


def test_replay_pages_through_long_logs_from_any_start() -> None:
    store = Store()
    model = fill(store, [(0, 30), (1, 30), (0, 30), (1, 10), (0, 10)])
    for start in (0, 1, 15, 16, 17, 31, 59, 60, 99, 109):
        for end in (start + 1, start + 17, start + 40, 200):
            got = [(n.origin, n.seqno, n.index) for n in store.replay(start, end, chunk=16)]
            assert got == model[start:end], (start, end)


def test_a_short_read_skips_origins_outside_its_range() -> None:
    store = Store()
    fill_many = [(bytes([i % 256, i // 256]) * 16, 2) for i in range(500)]
    for origin, n in fill_many:  # each origin's notes arrive together: idx 2k, 2k+1
        store.append(origin, 0, [(bytes(32), None, "x")] * n)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    got = [n.index for n in store.replay(500, 510)]
    assert got == list(range(500, 510))
    assert len(statements) <= 20, statements  # not a search per origin
