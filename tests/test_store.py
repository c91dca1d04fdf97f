"""The store on real SQLite files: arrival-order replay merged from the origins' logs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from zflood.identity import GENESIS, note_id
from zflood.store import Body, Row, Store

ORIGINS = [bytes([i]) * 32 for i in range(4)]


def chained(store: Store, origin: bytes, bodies: list[Body]) -> list[Row]:
    """Rows that continue `origin`'s log in `store` with real hash links (reads check them)."""
    count, prev = store.heads().get(origin, (0, GENESIS))
    rows: list[Row] = []
    for i, body in enumerate(bodies):
        prev = note_id(origin, count + i, prev, body)
        rows.append((prev, None, body))
    return rows


def fill(store: Store, arrivals: list[tuple[int, int]]) -> list[tuple[bytes, int, int]]:
    """Append runs (origin number, length) in order; returns (origin, seqno, index) of each
    note as a model of what replay must give."""
    model = []
    counts = [0] * len(ORIGINS)
    for o, n in arrivals:
        origin, start = ORIGINS[o], counts[o]
        rows = chained(store, origin, [f"{o}:{start + i}" for i in range(n)])
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


OLD_LAYOUT = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE origins (no INTEGER PRIMARY KEY, origin BLOB NOT NULL UNIQUE);
CREATE TABLE notes (origin INTEGER NOT NULL, seqno INTEGER NOT NULL, idx INTEGER NOT NULL,
    id BLOB NOT NULL, sig BLOB, body NOT NULL, PRIMARY KEY (origin, seqno)) WITHOUT ROWID;
CREATE UNIQUE INDEX notes_by_idx ON notes (idx);
CREATE TABLE forks (origin BLOB NOT NULL, seqno INTEGER NOT NULL, ours BLOB NOT NULL,
    theirs BLOB NOT NULL, evidence BLOB NOT NULL, PRIMARY KEY (origin, seqno)) WITHOUT ROWID;
"""


def test_a_store_of_the_without_rowid_layout_is_migrated_on_open(tmp_path: Path) -> None:
    model = Store()
    expected = fill(model, [(0, 2), (1, 3), (0, 2)])
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_LAYOUT)
    db.execute("INSERT INTO meta VALUES ('seed', ?)", (b"s" * 32,))
    for o in (0, 1):
        db.execute("INSERT INTO origins VALUES (?, ?)", (o + 1, ORIGINS[o]))
        for seqno, (nid, sig, body) in enumerate(model.read(ORIGINS[o], 0, 10)):
            idx = next(i for (orig, s, i) in expected if orig == ORIGINS[o] and s == seqno)
            db.execute("INSERT INTO notes VALUES (?, ?, ?, ?, ?, ?)",
                       (o + 1, seqno, idx, nid, sig, body))
    db.close()
    again = Store(path)
    names = [r[0] for r in again._db.execute("SELECT name FROM sqlite_master")]
    assert "notes" not in names and "notes_by_idx" not in names
    assert again._db.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.get_meta("seed") == b"s" * 32
    assert [(n.origin, n.seqno, n.index) for n in again.replay()] == expected
    assert again.heads() == model.heads()
    assert not again.damaged
    again.close()


def test_replay_gives_what_was_held_when_it_was_called_even_while_notes_arrive() -> None:
    store = Store()
    model = fill(store, [(0, 1), (1, 20)])
    got = []
    for note in store.replay(0, 100, chunk=32):
        if note.index == 0:  # a new origin's first note, then one more of a running origin
            store.append(ORIGINS[2], 0, chained(store, ORIGINS[2], ["late"]))
            store.append(ORIGINS[1], 20, chained(store, ORIGINS[1], ["later"]))
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
        store.append(origin, 0, chained(store, origin, ["x"] * n))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    got = [n.index for n in store.replay(500, 510)]
    assert got == list(range(500, 510))
    assert len(statements) <= 20, statements  # not a search per origin


def test_the_wal_stays_under_its_bound_and_a_clean_close_merges_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    bound = 256 * 1024
    store = Store(path, wal_bytes=bound)
    biggest = 0
    for i in range(300):  # single commits of 2 KiB notes: 600 KiB in all
        store.append(ORIGINS[0], i, chained(store, ORIGINS[0], [bytes([i % 256]) * 2048]))
        biggest = max(biggest, store.wal_size())
    # The threshold counts pages (each a frame with a 24-byte header) and is looked at after
    # each commit: one transaction past it at most (here: a leaf split, up to 4 pages).
    frame = 16384 + 24
    assert 0 < biggest <= 32 + (bound // 16384 + 4) * frame, biggest
    store.close()
    wal = tmp_path / "s.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    again = Store(path)
    assert again.heads()[ORIGINS[0]][0] == 300
    again.close()


def test_2_kib_notes_take_at_most_1_3_times_their_size_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    for o in range(2):  # two origins taking turns: inserts land inside the table too
        for i in range(0, 400, 50):
            store.append(ORIGINS[o], i, chained(store, ORIGINS[o], [bytes(2048)] * 50))
    store.close()
    assert path.stat().st_size <= 1.3 * 800 * 2048, path.stat().st_size / 800
