"""SQLite storage: one append-only log per origin, heads read from the index, replay streamed.

Theory of operation. `notes` is a WITHOUT ROWID table keyed by (origin number, seqno), so one
origin's log is contiguous on disk and a range read is one index walk. It is the only B-tree a
note touches: a single-note commit writes one page to the WAL, not two (a second index costs
a third of every publish). Each note also holds `idx`, its local arrival index. An origin's
notes arrive in seqno order, so within one origin `idx` grows with seqno: replay in arrival
order is a merge of the origins' logs by `idx`, and the first note at or after an index is a
binary search on the primary key. Heads are not kept in a table: each is one `max(seqno)`
lookup, so opening a store costs O(origins * log n) whatever the history. WAL with
synchronous=NORMAL makes a commit durable against a crash of the process (kill -9) once
`commit` returns; `fsync=True` switches to synchronous=FULL for power loss. App notes (a CBOR
map body with a text `app`, see appnote.py) are also indexed by (app, idx) in `app_notes`,
kept by triggers in the statement that stores the note.

Forks (the rule is in log.py). `replace` puts another branch in place of an origin's chain
from a seqno, in one transaction: the notes it replaces move to `dropped`, keeping their index
where they were delivered (replay merges them in by index, so what was delivered stays where
it was), and the new rows get new indices, so within an origin the index still grows with the
seqno. An index once given is never given again (opening takes the highest in `dropped` into
account). `again` holds, for chain notes that publish another's body again, the body replay
shows, or that it shows nothing (hidden: that body was delivered here already). Only the
engine writes; nothing here knows the protocol.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .appnote import app_of
from .errors import LocalError, StoreInUse

Body = str | bytes
Row = tuple[bytes, bytes | None, Body]  # (note id, signature or None, body)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS origins (no INTEGER PRIMARY KEY, origin BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS notes (
    origin INTEGER NOT NULL,
    seqno INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    id BLOB NOT NULL,
    sig BLOB,
    body NOT NULL,
    PRIMARY KEY (origin, seqno)
) WITHOUT ROWID;
-- earlier stores kept a second index on idx: one more page written by every commit
DROP INDEX IF EXISTS notes_by_idx;
CREATE TABLE IF NOT EXISTS forks (
    origin BLOB NOT NULL,
    seqno INTEGER NOT NULL,  -- where the branches split
    ours BLOB NOT NULL,  -- the id kept there (by the rule in log.py)
    theirs BLOB NOT NULL,  -- the id dropped there
    evidence BLOB NOT NULL,
    PRIMARY KEY (origin, seqno)
) WITHOUT ROWID;
-- Notes that left their origin's chain in a fork (or were received on a losing branch):
-- the evidence, what a member hands back to the origin, and (idx set) what replay still
-- shows here, since it was delivered here once. `root` is the note whose body it carries.
CREATE TABLE IF NOT EXISTS dropped (
    origin INTEGER NOT NULL,
    seqno INTEGER NOT NULL,
    id BLOB NOT NULL,
    sig BLOB,
    body NOT NULL,
    root BLOB NOT NULL,
    root_seqno INTEGER NOT NULL,
    shown NOT NULL,
    idx INTEGER,
    PRIMARY KEY (origin, seqno, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dropped_by_idx ON dropped (idx) WHERE idx IS NOT NULL;
CREATE INDEX IF NOT EXISTS dropped_by_root ON dropped (origin, root);
-- Notes of the chain that carry a body published again (see log.py): the body shown, and
-- whether it is hidden here because that body was delivered here already.
CREATE TABLE IF NOT EXISTS again (
    origin INTEGER NOT NULL,
    seqno INTEGER NOT NULL,
    root BLOB NOT NULL,
    root_seqno INTEGER NOT NULL,
    hidden INTEGER NOT NULL,
    shown NOT NULL,
    PRIMARY KEY (origin, seqno)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS again_by_root ON again (origin, root);
"""

#: What a chain note published again carries besides its row: (seqno, root id, root seqno,
#: hidden, body shown).
Again = tuple[int, bytes, int, bool, "Body"]
#: A note off the chain: (seqno, id, sig, body, root id, root seqno, body shown).
Dropped = tuple[int, bytes, bytes | None, "Body", bytes, int, "Body"]


@dataclass(frozen=True, slots=True)
class Note:
    """One delivered note. `index` is its local arrival index in this node's store."""

    origin: bytes
    seqno: int
    body: Body
    id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Fork:
    """Proof that `origin` signed two different notes at `seqno`, where its branches split:
    `kept` is the id of the note the group keeps there, `lost` of the one it drops."""

    origin: bytes
    seqno: int
    kept: bytes
    lost: bytes
    evidence: bytes  # CBOR: the conflicting signed batch as received, with its previous id


# App notes, by app and arrival index: an app reads its own notes at a cost that follows their
# number. The index follows what replay shows at each index (a chain note's body, the body a
# note published again carries, a note shown here before it left its chain), kept by triggers
# in the statements that change those, so it never disagrees with them. SQL looks at a body's
# first byte (a CBOR map) before Python decodes anything.
_APP_MAP = "typeof({0}) = 'blob' AND substr({0}, 1, 1) BETWEEN x'a0' AND x'bf'"


def _index_at(idx: str, origin: str, seqno: str, body: str, when: str = "1") -> str:
    """SQL: index `body`, shown at `idx`, if it is an app note and `when` holds."""
    return (f"INSERT OR REPLACE INTO app_notes SELECT a, {idx}, {origin}, {seqno}"
            f" FROM (SELECT zflood_app({body}) AS a) WHERE a IS NOT NULL AND ({when})"
            f" AND {_APP_MAP.format(body)}")


_NOTE_OF_AGAIN = "(SELECT idx FROM notes WHERE origin = {0}.origin AND seqno = {0}.seqno)"
_APP_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS app_notes (
    app TEXT NOT NULL,
    idx INTEGER NOT NULL,
    origin INTEGER NOT NULL,
    seqno INTEGER NOT NULL,
    PRIMARY KEY (app, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS app_notes_by_idx ON app_notes (idx);
CREATE TRIGGER IF NOT EXISTS app_notes_insert AFTER INSERT ON notes
WHEN {_APP_MAP.format("NEW.body")} BEGIN
    {_index_at("NEW.idx", "NEW.origin", "NEW.seqno", "NEW.body")};
END;
-- a note replaced in a fork moved to `dropped` first, which indexed what it shows there
CREATE TRIGGER IF NOT EXISTS app_notes_delete AFTER DELETE ON notes BEGIN
    DELETE FROM app_notes WHERE idx = OLD.idx
        AND NOT EXISTS (SELECT 1 FROM dropped WHERE idx = OLD.idx);
END;
CREATE TRIGGER IF NOT EXISTS app_notes_update AFTER UPDATE OF body ON notes BEGIN
    DELETE FROM app_notes WHERE idx = OLD.idx;
    {_index_at("NEW.idx", "NEW.origin", "NEW.seqno", "NEW.body")};
END;
CREATE TRIGGER IF NOT EXISTS app_notes_again AFTER INSERT ON again BEGIN
    DELETE FROM app_notes WHERE idx = {_NOTE_OF_AGAIN.format("NEW")};
    {_index_at(_NOTE_OF_AGAIN.format("NEW"), "NEW.origin", "NEW.seqno", "NEW.shown",
               "NOT NEW.hidden")};
END;
CREATE TRIGGER IF NOT EXISTS app_notes_again_gone AFTER DELETE ON again BEGIN
    DELETE FROM app_notes WHERE idx = {_NOTE_OF_AGAIN.format("OLD")}
        AND NOT EXISTS (SELECT 1 FROM dropped WHERE idx = {_NOTE_OF_AGAIN.format("OLD")});
END;
CREATE TRIGGER IF NOT EXISTS app_notes_dropped AFTER INSERT ON dropped
WHEN NEW.idx IS NOT NULL BEGIN
    DELETE FROM app_notes WHERE idx = NEW.idx;
    {_index_at("NEW.idx", "NEW.origin", "NEW.seqno", "NEW.shown")};
END;
"""
# A store from before the index: the same, from what it holds.
_APP_BACKFILL = f"""
INSERT OR REPLACE INTO app_notes SELECT a, idx, origin, seqno FROM (SELECT zflood_app(body)
    AS a, idx, origin, seqno FROM notes WHERE {_APP_MAP.format("body")}) WHERE a IS NOT NULL;
DELETE FROM app_notes WHERE idx IN (SELECT n.idx FROM again g JOIN notes n
    ON n.origin = g.origin AND n.seqno = g.seqno);
INSERT OR REPLACE INTO app_notes SELECT a, idx, origin, seqno FROM (SELECT zflood_app(g.shown)
    AS a, n.idx, n.origin, n.seqno FROM again g JOIN notes n ON n.origin = g.origin
    AND n.seqno = g.seqno WHERE NOT g.hidden) WHERE a IS NOT NULL;
DELETE FROM app_notes WHERE idx IN (SELECT idx FROM dropped WHERE idx IS NOT NULL);
INSERT OR REPLACE INTO app_notes SELECT a, idx, origin, seqno FROM (SELECT zflood_app(shown)
    AS a, idx, origin, seqno FROM dropped WHERE idx IS NOT NULL) WHERE a IS NOT NULL;
"""

# An app's notes from the index, each looked up by its key: never a scan of the log. The
# plain form serves a store with no fork in it; the other also looks where replay would.
_APP_READ = (
    "SELECT a.idx, a.origin, a.seqno, n.body, n.id FROM app_notes a"
    " JOIN notes n ON n.origin = a.origin AND n.seqno = a.seqno"
    " WHERE a.app = ? AND a.idx >= ? AND a.idx < ? ORDER BY a.idx LIMIT ?"
)
_APP_READ_FORKED = (
    "SELECT a.idx, a.origin, a.seqno,"
    " CASE WHEN n.idx = a.idx THEN (CASE WHEN g.hidden THEN NULL ELSE coalesce(g.shown, n.body)"
    "   END) ELSE d.shown END,"
    " CASE WHEN n.idx = a.idx THEN n.id ELSE d.id END"
    " FROM app_notes a"
    " LEFT JOIN notes n ON n.origin = a.origin AND n.seqno = a.seqno"
    " LEFT JOIN again g ON g.origin = a.origin AND g.seqno = a.seqno"
    " LEFT JOIN dropped d ON d.idx = a.idx"
    " WHERE a.app = ? AND a.idx >= ? AND a.idx < ? ORDER BY a.idx LIMIT ?"
)


class Store:
    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = False):
        self.path = None if path is None else os.fspath(path)
        try:
            if self.path is not None:
                self._db = _connect(self.path)
                self._db.execute("PRAGMA journal_mode=WAL")
            else:
                self._db = sqlite3.connect(":memory:", isolation_level=None)
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # A checkpoint copies the WAL into the database and syncs both: a few ms. Every
            # 10,000 pages (a WAL of up to 40 MB) instead of SQLite's 1,000 makes that pause
            # ten times rarer (p99.9 of a publish: 3.7 ms -> 0.1 ms) and publishing ~20% faster.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            if _busy(e):
                raise StoreInUse(f"store {self.path} is in use by another process") from None
            raise LocalError(f"cannot open store {self.path}: {e}") from None
        self._origin_no: dict[bytes, int] = {}
        self._origins: dict[int, bytes] = {}
        self._spans: dict[int, _Span] = {}
        self._again: set[int] = set()  # origins with notes published again on their chain
        self._dropped_shown = False  # whether replay must look at dropped notes
        self.next_index = 0
        self._load()
        self._open_app_index()

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- heads ---------------------------------------------------------------------------
    def heads(self) -> dict[bytes, tuple[int, bytes]]:
        """For every origin: (count held, id of the last note)."""
        return {self._origins[no]: (s.last + 1, s.last_id) for no, s in self._spans.items()}

    def count(self, origin: bytes) -> int:
        """How many of `origin`'s notes are held (its next seqno)."""
        span = self._spans.get(self._origin_no.get(origin, -1))
        return 0 if span is None else span.last + 1

    def head(self, origin: bytes) -> bytes | None:
        """The id of `origin`'s last held note, None if none is held."""
        span = self._spans.get(self._origin_no.get(origin, -1))
        return None if span is None else span.last_id

    @property
    def origins_held(self) -> int:
        """How many origins have at least one note held."""
        return len(self._spans)

    def counts(self) -> dict[bytes, int]:
        """For every origin held: how many of its notes."""
        return {self._origins[no]: s.last + 1 for no, s in self._spans.items()}

    def tips(self) -> dict[bytes, bytes]:
        """For every origin held: the id of its last note."""
        return {self._origins[no]: s.last_id for no, s in self._spans.items()}

    def _no(self, origin: bytes) -> int:
        no = self._origin_no.get(origin)
        if no is None:
            no = self._db.execute("INSERT INTO origins (origin) VALUES (?)", (origin,)).lastrowid
            assert no is not None
            self._origin_no[origin] = no
            self._origins[no] = origin
        return no

    # -- writes --------------------------------------------------------------------------
    def append(
        self, origin: bytes, start: int, rows: Sequence[Row], again: Sequence[Again] = ()
    ) -> int:
        """Store notes start.. of `origin` in one transaction; returns the first's index.
        Durable (against a crash of the process) when this returns. `again` describes the
        rows that carry a body published again."""
        if again:
            with self._transaction():
                first = self._append(origin, start, rows)
                self._add_again(origin, again)
            return first
        return self._append(origin, start, rows)

    def _append(self, origin: bytes, start: int, rows: Sequence[Row]) -> int:
        first = self.next_index
        no = self._no(origin)
        db = self._db
        insert = "INSERT INTO notes (origin, seqno, idx, id, sig, body) VALUES (?,?,?,?,?,?)"
        if len(rows) == 1:  # one statement commits by itself (or joins the open transaction)
            note_id, sig, body = rows[0]
            db.execute(insert, (no, start, first, note_id, sig, body))
        else:
            with self._transaction():
                db.executemany(
                    insert,
                    [(no, start + i, first + i, r[0], r[1], r[2]) for i, r in enumerate(rows)],
                )
        n = len(rows)
        span = self._spans.get(no)
        self._spans[no] = _Span(
            first if span is None else span.first_index, start + n - 1, rows[-1][0], first + n - 1
        )
        self.next_index = first + n
        return first

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (or a part of the one already open). On failure what is held in
        memory is read again, since it may have been updated before the rollback."""
        db = self._db
        if db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            self._load()
            raise
        db.execute("COMMIT")

    def _add_again(self, origin: bytes, again: Sequence[Again]) -> None:
        no = self._no(origin)
        self._db.executemany(
            "INSERT OR REPLACE INTO again VALUES (?, ?, ?, ?, ?, ?)",
            [(no, seqno, root, root_seqno, int(hidden), shown)
             for seqno, root, root_seqno, hidden, shown in again],
        )
        self._again.add(no)

    def replace(
        self, origin: bytes, start: int, rows: Sequence[Row], again: Sequence[Again] = ()
    ) -> int:
        """Replace `origin`'s chain from seqno `start` by `rows`, in one transaction; returns
        the first new row's index. The notes replaced move to `dropped`; those that were shown
        here keep their index there, so replay still shows them where they were, and new rows
        get new indices, so within an origin the index still grows with the seqno."""
        no = self._no(origin)
        db = self._db
        with self._transaction():
            cur = db.execute(
                "INSERT OR IGNORE INTO dropped SELECT n.origin, n.seqno, n.id, n.sig, n.body,"
                " coalesce(a.root, n.id), coalesce(a.root_seqno, n.seqno),"
                " coalesce(a.shown, n.body), CASE WHEN a.hidden THEN NULL ELSE n.idx END"
                " FROM notes n LEFT JOIN again a ON a.origin = n.origin AND a.seqno = n.seqno"
                " WHERE n.origin = ? AND n.seqno >= ?",
                (no, start),
            )
            if cur.rowcount:
                self._dropped_shown = True
            db.execute("DELETE FROM again WHERE origin = ? AND seqno >= ?", (no, start))
            db.execute("DELETE FROM notes WHERE origin = ? AND seqno >= ?", (no, start))
            self._load_span(no)
            first = self.next_index
            if rows:
                first = self._append(origin, start, rows)
            if again:
                self._add_again(origin, again)
        return first

    def keep(self, origin: bytes, notes: Sequence[Dropped]) -> int:
        """Keep notes of `origin` that are not on its chain here (never shown here);
        returns how many were new."""
        no = self._no(origin)
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO dropped VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [(no, *note) for note in notes],
            )
            return self._db.total_changes - before

    def add_fork(self, fork: Fork) -> bool:
        """Record a fork once per (origin, seqno); True if it is new."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?, ?)",
            (fork.origin, fork.seqno, fork.kept, fork.lost, fork.evidence),
        )
        return cur.rowcount == 1

    def _load(self) -> None:
        """Read again what is kept in memory of every origin."""
        self._origin_no = dict(self._db.execute("SELECT origin, no FROM origins").fetchall())
        self._origins = {no: o for o, no in self._origin_no.items()}
        self._spans = {}
        for no in self._origins:
            self._load_span(no)
        self._again = {no for (no,) in self._db.execute("SELECT DISTINCT origin FROM again")}
        shown_max = self._db.execute("SELECT max(idx) FROM dropped").fetchone()[0]
        self._dropped_shown = shown_max is not None
        # an index once given is never given again, even if its note left the chain
        self.next_index = max(
            self.next_index,
            max((s.last_index for s in self._spans.values()), default=-1) + 1,
            0 if shown_max is None else shown_max + 1,
        )

    def _load_span(self, no: int) -> None:
        row = self._db.execute(
            "SELECT seqno, id, idx FROM notes WHERE origin = ? ORDER BY seqno DESC LIMIT 1",
            (no,),
        ).fetchone()
        if row is None:
            self._spans.pop(no, None)
            return
        first = self._db.execute(
            "SELECT idx FROM notes WHERE origin = ? AND seqno = 0", (no,)
        ).fetchone()[0]
        self._spans[no] = _Span(first, *row)

    # -- what forks left -----------------------------------------------------------------
    def delivered(self, origin: bytes, root: bytes, root_seqno: int) -> bool:
        """Whether a note carrying the body of note `root` was shown here: on the chain, or
        before it left the chain."""
        no = self._origin_no.get(origin)
        if no is None:
            return False
        db = self._db
        return (
            db.execute("SELECT 1 FROM dropped WHERE origin = ? AND root = ? AND idx IS NOT NULL",
                       (no, root)).fetchone() is not None
            or self.id_at(origin, root_seqno) == root
            or db.execute("SELECT 1 FROM again WHERE origin = ? AND root = ? AND NOT hidden",
                          (no, root)).fetchone() is not None
        )

    def owed(self, origin: bytes) -> list[Dropped]:
        """Notes of `origin` off its chain here whose body the chain does not carry (as the
        note itself or published again), by seqno: what its origin must publish again."""
        no = self._origin_no.get(origin)
        if no is None:
            return []
        return [
            (seqno, bytes(nid), sig, body, bytes(root), root_seqno, shown)
            for seqno, nid, sig, body, root, root_seqno, shown in self._db.execute(
                "SELECT d.seqno, d.id, d.sig, d.body, d.root, d.root_seqno, d.shown"
                " FROM dropped d WHERE d.origin = ?"
                " AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.origin = d.origin"
                "                 AND n.seqno = d.root_seqno AND n.id = d.root)"
                " AND NOT EXISTS (SELECT 1 FROM again a WHERE a.origin = d.origin"
                "                 AND a.root = d.root)"
                " ORDER BY d.seqno, d.id",
                (no,),
            )
        ]

    def published_again(self, origin: bytes, since: int) -> tuple[int, int, int]:
        """(how many, first seqno, last seqno) of chain notes of `origin` that carry bodies of
        notes at `since` or later, published again; (0, -1, -1) if none."""
        no = self._origin_no.get(origin)
        if no is None or no not in self._again:
            return 0, -1, -1
        n, first, last = self._db.execute(
            "SELECT count(*), min(seqno), max(seqno) FROM again WHERE origin = ?"
            " AND root_seqno >= ?", (no, since)
        ).fetchone()
        return (0, -1, -1) if not n else (n, first, last)

    def dropped_count(self, origin: bytes, since: int) -> int:
        """Notes of `origin` from seqno `since` on that are held off its chain."""
        no = self._origin_no.get(origin)
        if no is None:
            return 0
        return int(self._db.execute(
            "SELECT count(*) FROM dropped WHERE origin = ? AND seqno >= ?", (no, since)
        ).fetchone()[0])

    # -- reads ---------------------------------------------------------------------------
    def read(self, origin: bytes, start: int, end: int) -> list[Row]:
        """Notes [start, end) of `origin` that are held, in order."""
        no = self._origin_no.get(origin)
        if no is None:
            return []
        return self._db.execute(
            "SELECT id, sig, body FROM notes WHERE origin = ? AND seqno >= ? AND seqno < ?"
            " ORDER BY seqno",
            (no, start, end),
        ).fetchall()

    def next_signed(self, origin: bytes, start: int) -> int | None:
        """The first seqno >= start whose signature is stored."""
        no = self._origin_no.get(origin)
        if no is None:
            return None
        row = self._db.execute(
            "SELECT seqno FROM notes WHERE origin = ? AND seqno >= ? AND sig IS NOT NULL"
            " ORDER BY seqno LIMIT 1",
            (no, start),
        ).fetchone()
        return None if row is None else int(row[0])

    def id_at(self, origin: bytes, seqno: int) -> bytes | None:
        no = self._origin_no.get(origin)
        if no is None:
            return None
        row = self._db.execute(
            "SELECT id FROM notes WHERE origin = ? AND seqno = ?", (no, seqno)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def replay(self, start: int = 0, end: int | None = None, chunk: int = 1000) -> Iterator[Note]:
        """Notes with start <= index < end that are held when this is called, in arrival
        order. The origins' logs are read `chunk` notes at a time between them, so memory
        stays flat however long the history. It costs a binary search for
        each origin that has notes both before and inside the range: O(log n) for the few
        members of a group, more for a store with thousands of origins all active at once."""
        stop = self.next_index if end is None else min(end, self.next_index)
        live = [
            no for no, s in self._spans.items() if s.last_index >= start and s.first_index < stop
        ]
        if start >= stop or not (live or self._dropped_shown):
            return iter(())
        # at most `chunk` rows held at once (one each when origins outnumber it)
        per = max(1, min(stop - start, chunk // (len(live) + 1)))
        runs = [self._run(no, self._first_at(no, start), stop, per) for no in live]
        if self._dropped_shown:  # notes that left a chain in a fork are shown where they were
            runs.append(self._dropped_run(start, stop, per))
        if len(runs) == 1:
            return runs[0]
        return heapq.merge(*runs, key=_index)

    def _first_at(self, no: int, index: int) -> int:
        """The first seqno of origin `no` whose note has an arrival index >= `index`: a binary
        search on the primary key, as the index grows with the seqno within an origin. An
        origin's notes are held from seqno 0 without a gap and no two share an index, so the
        answer is at least `index` minus the tail's distance: a reader near the end searches
        a window as wide as how far back it reads, whatever the history."""
        span = self._spans[no]
        if span.first_index >= index:
            return 0
        lo, hi = max(0, span.last - (span.last_index - index)), span.last
        while lo < hi:
            mid = (lo + hi) // 2
            if self._db.execute(
                "SELECT idx FROM notes WHERE origin = ? AND seqno = ?", (no, mid)
            ).fetchone()[0] >= index:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _run(self, no: int, seqno: int, stop: int, chunk: int) -> Iterator[Note]:
        """Origin `no`'s notes from `seqno` on whose index is below `stop`."""
        origin = self._origins[no]
        while True:
            rows = self._db.execute(
                "SELECT seqno, body, id, idx FROM notes WHERE origin = ? AND seqno >= ?"
                " ORDER BY seqno LIMIT ?",
                (no, seqno, chunk),
            ).fetchall()
            if rows and no in self._again:
                yield from self._run_again(origin, no, rows, stop)
                if rows[-1][3] >= stop:
                    return
            else:
                for seq, body, note_id, idx in rows:
                    if idx >= stop:
                        return
                    yield Note(origin, seq, body, note_id, idx)
            if len(rows) < chunk:
                return
            seqno = rows[-1][0] + 1
            # indices grow within an origin: no more than this many of its notes are left
            # below `stop` (reading a full chunk past the range doubled a short read's cost)
            chunk = min(chunk, stop - rows[-1][3] - 1)
            if chunk <= 0:
                return

    def _run_again(
        self, origin: bytes, no: int, rows: list[Any], stop: int
    ) -> Iterator[Note]:
        """`rows` of a chain that holds bodies published again: those show the body they
        carry, or nothing where that body was shown here already."""
        again = {
            seq: (hidden, shown) for seq, hidden, shown in self._db.execute(
                "SELECT seqno, hidden, shown FROM again WHERE origin = ? AND seqno >= ?"
                " AND seqno <= ?", (no, rows[0][0], rows[-1][0]))
        }
        for seq, body, note_id, idx in rows:
            if idx >= stop:
                return
            extra = again.get(seq)
            if extra is None:
                yield Note(origin, seq, body, note_id, idx)
            elif not extra[0]:
                yield Note(origin, seq, extra[1], note_id, idx)

    def _dropped_run(self, start: int, stop: int, chunk: int) -> Iterator[Note]:
        """Notes shown here before they left their chain, by index."""
        while True:
            rows = self._db.execute(
                "SELECT d.idx, o.origin, d.seqno, d.shown, d.id FROM dropped d"
                " JOIN origins o ON o.no = d.origin"
                " WHERE d.idx >= ? AND d.idx < ? ORDER BY d.idx LIMIT ?",
                (start, stop, chunk),
            ).fetchall()
            for idx, origin, seq, shown, note_id in rows:
                yield Note(origin, seq, shown, note_id, idx)
            if len(rows) < chunk:
                return
            start = rows[-1][0] + 1

    # -- app notes -----------------------------------------------------------------------
    def _open_app_index(self) -> None:
        self._db.create_function("zflood_app", 1, app_of, deterministic=True)
        if self.get_meta("app_index") is not None:
            return
        # The first open since the index came: built once, from what the store holds, in
        # the same transaction as the table and its triggers.
        try:
            self._db.executescript(
                f"BEGIN; {_APP_SCHEMA} {_APP_BACKFILL}"
                " INSERT OR REPLACE INTO meta VALUES ('app_index', 1); COMMIT;"
            )
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def app_notes(self, app: str, start: int = 0, end: int | None = None,
                  limit: int = 1000) -> tuple[list[Note], int]:
        """`app`'s held notes with start <= index < end, at most `limit`, in arrival order,
        and the index below which every note of `app` has been returned."""
        stop = self.next_index if end is None else min(end, self.next_index)
        if start >= stop:
            return [], start
        forked = bool(self._again) or self._dropped_shown
        rows = self._db.execute(_APP_READ_FORKED if forked else _APP_READ,
                                (app, start, stop, limit)).fetchall()
        notes = [Note(self._origins[no], seq, body, note_id, idx)
                 for idx, no, seq, body, note_id in rows if body is not None]
        return notes, stop if len(rows) < limit else rows[-1][0] + 1

    def app_before(self, app: str, index: int) -> int:
        """The index of `app`'s last held note below `index`, or -1."""
        row = self._db.execute(
            "SELECT max(idx) FROM app_notes WHERE app = ? AND idx < ?", (app, index)
        ).fetchone()
        return -1 if row[0] is None else int(row[0])

    def forks(self) -> list[Fork]:
        return [
            Fork(*row)
            for row in self._db.execute(
                "SELECT origin, seqno, ours, theirs, evidence FROM forks ORDER BY origin, seqno")
        ]

    def close(self) -> None:
        self._db.close()


class _Span(NamedTuple):
    """What the store keeps in memory of one origin's log: O(origins), not O(history)."""

    first_index: int  # arrival index of seqno 0
    last: int  # seqno of the last note
    last_id: bytes
    last_index: int


def _index(note: Note) -> int:
    return note.index


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection that takes the store's lock for itself and never waits for it."""
    # private keys live in this file: keep it (and its -wal, -shm) owner-only
    old = os.umask(0o077)
    try:
        # No busy wait: the only other holder of the lock is a process that owns the store
        # for as long as it runs, so fail at once.
        db = sqlite3.connect(path, isolation_level=None, timeout=0)
        # One process owns a store. Exclusive locking keeps the WAL index in memory: no
        # shared-memory file, no file locks per commit (a quarter off each publish). It also
        # stops a second process opening it by mistake.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        return db
    finally:
        os.umask(old)


def _busy(e: sqlite3.Error) -> bool:
    return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a process holds the store at `path` open (a daemon, or an export running).
    Asks SQLite's own lock, so a stale pid file or a reused pid cannot mislead it."""
    if not os.path.exists(path):
        return False
    try:
        db = _connect(path)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()  # lets go of the lock it took
    except sqlite3.Error as e:
        return _busy(e)
    return False
