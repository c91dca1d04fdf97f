"""SQLite storage: one append-only log per origin, heads read from the index, replay streamed.

Theory of operation. `log` is an ordinary rowid table whose INTEGER PRIMARY KEY packs
(origin number, seqno) as `no << 40 | seqno`, so one origin's log is a rowid range, contiguous
on disk, and a range read is one B-tree walk. It is the only B-tree a note touches: a
single-note commit writes one leaf page to the WAL. A rowid table keeps a row of up to about
page size - 35 bytes on its leaf page and packs longer ones into full overflow pages (a
WITHOUT ROWID table keeps only about a quarter page of a row on its leaf, so a 2 KiB note cost
4.7 KB), and 16 KiB pages hold seven 2 KiB notes a page (4 KiB pages hold one, 8 KiB three):
measured bytes on disk per note are printed by tools/bench_engine.py.

Each note also holds `idx`, its local arrival index. An origin's notes arrive in seqno order,
so within one origin `idx` grows with seqno: replay in arrival order is a merge of the origins'
logs by `idx`, and the first note at or after an index is a binary search on the key. Heads
are not kept in a table: each is one lookup of the range's last key, so opening a store costs
O(origins * log n) whatever the history. App notes (a CBOR map body with a text `app`, see
appnote.py) are also indexed by (app, idx) in `app_notes`, kept by triggers in the statement
that stores the note.

Every read that hands notes on (replay, `read`) rechecks each note's hash link, id ==
note_id(origin, seqno, previous id, body), so a note whose bytes changed on disk is never
delivered or served: it is left out, recorded in `damaged`, and reported to `on_damage`
(the engine fetches it again from a peer and `repair` puts it back). SQLite's own errors
become `StoreFull` (no space: nothing was written) or `StoreDamaged`/`StoreError`, one line
each, never a traceback and never a peer's fault.

Forks (the rule is in log.py). `replace` puts another branch in place of an origin's chain
from a seqno, in one transaction: the notes it replaces move to `dropped`, keeping their index
where they were delivered (replay merges them in by index, so what was delivered stays where
it was), and the new rows get new indices, so within an origin the index still grows with the
seqno. An index once given is never given again (opening takes the highest in `dropped` into
account). `again` holds, for chain notes that publish another's body again, the body replay
shows, or that it shows nothing (hidden: that body was delivered here already).

WAL with synchronous=NORMAL makes a commit durable against a crash of the process (kill -9)
once `commit` returns; `fsync=True` switches to synchronous=FULL for power loss. The WAL is
checkpointed once it holds `wal_bytes` and truncated back to that size after, so it never
exceeds `wal_bytes` plus the largest single transaction; a clean `close` merges it whole.
Only the engine writes; nothing here knows the protocol.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cbor2

from .appnote import app_of
from .config import Config
from .errors import StoreDamaged, StoreError, StoreFull, StoreInUse
from .identity import GENESIS, ID_SIZE, SIG_SIZE, note_id, verify

Body = str | bytes
Row = tuple[bytes, bytes | None, Body]  # (note id, signature or None, body)

#: Bytes of a page for new stores: see the module docstring (existing ones are migrated).
PAGE_SIZE = 16384
_SEQ_BITS = 40  # a key is origin number << 40 | seqno: 2**40 notes per origin
_MAX_SEQ = (1 << _SEQ_BITS) - 1
#: Most damaged seqnos remembered per origin (a wrecked page can hold a hundred notes).
MAX_DAMAGED = 100_000
#: A lost note's index is found by looking at every index between its neighbours' when they
#: are at most this far apart, else by bisection on counts (see Store._free_index).
_SCAN_INDICES = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS origins (no INTEGER PRIMARY KEY, origin BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS log (
    k INTEGER PRIMARY KEY,  -- origin number << 40 | seqno
    idx INTEGER NOT NULL,
    id BLOB NOT NULL,
    sig BLOB,
    body NOT NULL  -- last, so reading the other columns never touches overflow pages
);
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


# Stores written before the rowid table: moved into `log` on open, once.
_OLD_NOTES = "notes"
_MIGRATE = f"""
INSERT INTO log (k, idx, id, sig, body)
    SELECT (origin << {_SEQ_BITS}) | seqno, idx, id, sig, body FROM notes;
DROP TABLE notes;
-- the app index's triggers name the old table (those on it went with it); made again
DROP TRIGGER IF EXISTS app_notes_again;
DROP TRIGGER IF EXISTS app_notes_again_gone;
DROP TRIGGER IF EXISTS app_notes_dropped;
"""

# App notes, by app and arrival index: an app reads its own notes at a cost that follows their
# number. The index follows what replay shows at each index (a chain note's body, the body a
# note published again carries, a note shown here before it left its chain), kept by triggers
# in the statements that change those, so it never disagrees with them. SQL looks at a body's
# first byte (a CBOR map) before Python decodes anything.
_APP_MAP = "typeof({0}) = 'blob' AND substr({0}, 1, 1) BETWEEN x'a0' AND x'bf'"
_ORIGIN_OF = "({0}.k >> " + str(_SEQ_BITS) + ")"
_SEQNO_OF = "({0}.k & " + str(_MAX_SEQ) + ")"


def _index_at(idx: str, origin: str, seqno: str, body: str, when: str = "1") -> str:
    """SQL: index `body`, shown at `idx`, if it is an app note and `when` holds."""
    return (f"INSERT OR REPLACE INTO app_notes SELECT a, {idx}, {origin}, {seqno}"
            f" FROM (SELECT zflood_app({body}) AS a) WHERE a IS NOT NULL AND ({when})"
            f" AND {_APP_MAP.format(body)}")


_NOTE_OF_AGAIN = ("(SELECT idx FROM log WHERE k = ({0}.origin << " + str(_SEQ_BITS)
                  + ") | {0}.seqno)")
_APP_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS app_notes (
    app TEXT NOT NULL,
    idx INTEGER NOT NULL,
    origin INTEGER NOT NULL,
    seqno INTEGER NOT NULL,
    PRIMARY KEY (app, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS app_notes_by_idx ON app_notes (idx);
CREATE TRIGGER IF NOT EXISTS app_notes_insert AFTER INSERT ON log
WHEN {_APP_MAP.format("NEW.body")} BEGIN
    {_index_at("NEW.idx", _ORIGIN_OF.format("NEW"), _SEQNO_OF.format("NEW"), "NEW.body")};
END;
-- a note replaced in a fork moved to `dropped` first, which indexed what it shows there
CREATE TRIGGER IF NOT EXISTS app_notes_delete AFTER DELETE ON log BEGIN
    DELETE FROM app_notes WHERE idx = OLD.idx
        AND NOT EXISTS (SELECT 1 FROM dropped WHERE idx = OLD.idx);
END;
CREATE TRIGGER IF NOT EXISTS app_notes_update AFTER UPDATE OF body ON log BEGIN
    DELETE FROM app_notes WHERE idx = OLD.idx;
    {_index_at("NEW.idx", _ORIGIN_OF.format("NEW"), _SEQNO_OF.format("NEW"), "NEW.body")};
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
INSERT OR REPLACE INTO app_notes SELECT a, idx, o, s FROM (SELECT zflood_app(body) AS a, idx,
    {_ORIGIN_OF.format("log")} AS o, {_SEQNO_OF.format("log")} AS s FROM log
    WHERE {_APP_MAP.format("body")}) WHERE a IS NOT NULL;
DELETE FROM app_notes WHERE idx IN (SELECT n.idx FROM again g JOIN log n
    ON n.k = (g.origin << {_SEQ_BITS}) | g.seqno);
INSERT OR REPLACE INTO app_notes SELECT a, idx, origin, seqno FROM (SELECT zflood_app(g.shown)
    AS a, n.idx, g.origin, g.seqno FROM again g JOIN log n
    ON n.k = (g.origin << {_SEQ_BITS}) | g.seqno WHERE NOT g.hidden) WHERE a IS NOT NULL;
DELETE FROM app_notes WHERE idx IN (SELECT idx FROM dropped WHERE idx IS NOT NULL);
INSERT OR REPLACE INTO app_notes SELECT a, idx, origin, seqno FROM (SELECT zflood_app(shown)
    AS a, idx, origin, seqno FROM dropped WHERE idx IS NOT NULL) WHERE a IS NOT NULL;
"""

# An app's notes from the index, each looked up by its key (and the note before it, whose id
# its hash link needs): never a scan of the log. The plain form serves a store with no fork
# in it; the other also looks where replay would.
_APP_READ = (
    "SELECT a.idx, a.origin, a.seqno, n.idx, n.body, n.id, p.id, NULL, NULL, NULL, NULL, NULL"
    " FROM app_notes a"
    f" JOIN log n ON n.k = (a.origin << {_SEQ_BITS}) | a.seqno"
    " LEFT JOIN log p ON p.k = n.k - 1 AND a.seqno > 0"
    " WHERE a.app = ? AND a.idx >= ? AND a.idx < ? ORDER BY a.idx LIMIT ?"
)
_APP_READ_FORKED = (
    "SELECT a.idx, a.origin, a.seqno, n.idx, n.body, n.id, p.id, g.hidden, g.shown, d.shown,"
    " d.id, d.body FROM app_notes a"
    f" LEFT JOIN log n ON n.k = (a.origin << {_SEQ_BITS}) | a.seqno"
    " LEFT JOIN log p ON p.k = n.k - 1 AND a.seqno > 0"
    " LEFT JOIN again g ON g.origin = a.origin AND g.seqno = a.seqno"
    " LEFT JOIN dropped d ON d.idx = a.idx"
    " WHERE a.app = ? AND a.idx >= ? AND a.idx < ? ORDER BY a.idx LIMIT ?"
)


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


@dataclass(frozen=True, slots=True)
class CheckProgress:
    """One step of `Store.check`: notes checked so far of `total`, and what is damaged."""

    checked: int
    total: int
    damaged: dict[bytes, list[int]]  # origin -> damaged seqnos found so far (sorted)
    integrity: list[str]  # what SQLite's integrity_check said, when not "ok"


class Store:
    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = False,
        wal_bytes: int = Config.wal_bytes,
        wal_min: int = Config.wal_min,
    ):
        self.path = None if path is None else os.fspath(path)
        #: origin -> seqnos whose stored note failed its hash link (left out of every read)
        self.damaged: dict[bytes, set[int]] = {}
        #: notes off their chain (see forks) whose bytes no longer match their id: left out
        #: of replay; (origin number, seqno, id)
        self.damaged_off_chain: set[tuple[int, int, object]] = set()
        #: (origin, seqno) of damaged notes that could not be put back (no index left free)
        self.unrepairable: set[tuple[bytes, int]] = set()
        #: (origin, seqno) -> arrival index of damaged notes whose index is known: what a
        #: read skipped, so a follower can take the note when it is repaired
        self.damaged_at: dict[tuple[bytes, int], int] = {}
        self._index_unknown: set[tuple[bytes, int]] = set()  # damaged, index not found
        #: called once per newly damaged note with (origin, seqno)
        self.on_damage: Callable[[bytes, int], None] | None = None
        try:
            if self.path is not None:
                self._db = _connect(self.path)
                # takes effect on a new file only; an old one keeps its size until migrated
                self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                self._db.execute("PRAGMA journal_mode=WAL")
            else:
                self._db = sqlite3.connect(":memory:", isolation_level=None)
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._migrate()
            self._db.executescript(_SCHEMA)
            self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._wal_range = (min(wal_min, wal_bytes), wal_bytes)
            self.wal_bound = 0
            self.fit_wal()
        except sqlite3.DatabaseError as e:
            if _busy(e):
                raise StoreInUse(f"store {self.path} is in use by another process") from None
            raise _error(e, f"cannot open store {self.path}") from None
        self._origin_no: dict[bytes, int] = {}
        self._origins: dict[int, bytes] = {}
        self._spans: dict[int, _Span] = {}
        self._again: set[int] = set()  # origins with notes published again on their chain
        self._dropped_shown = False  # whether replay must look at dropped notes
        self.next_index = 0
        with self._errors("cannot open store"):
            self._load()
            self._open_app_index()

    def _migrate(self) -> None:
        """Move a store of the WITHOUT ROWID layout into `log`, and give it the page size of
        new stores (VACUUM rewrites the file; SQLite changes a page size only outside WAL)."""
        db = self._db
        if db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_OLD_NOTES,)
        ).fetchone() is None:
            return
        try:
            db.executescript(f"BEGIN; {_SCHEMA} {_MIGRATE} COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if self.path is not None and int(db.execute("PRAGMA page_size").fetchone()[0]) != PAGE_SIZE:
            with contextlib.suppress(sqlite3.Error):  # a store at the old size works too
                db.execute("PRAGMA journal_mode=DELETE")
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                db.execute("VACUUM")
            db.execute("PRAGMA journal_mode=WAL")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise _error(e, f"{doing} {self.path or '(memory)'}") from None

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self._errors("cannot read store"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        if self.get_meta(key) == value:
            return  # opening a store to read it writes nothing (and closes at once)
        with self._errors("cannot write store"):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def set_meta_many(self, items: dict[str, Any]) -> None:
        """Write many meta rows in one transaction (one commit, not one each)."""
        with self._errors("cannot write store"), self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())

    def is_empty(self) -> bool:
        """Whether the file holds nothing at all (no identity, no notes): new, or emptied."""
        with self._errors("cannot read store"):
            return self._db.execute("SELECT count(*) FROM meta").fetchone()[0] == 0 and not (
                self._spans
            )

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
        Durable (against a crash of the process) when this returns; on `StoreFull` nothing
        was written. `again` describes the rows that carry a body published again."""
        with self._errors("cannot write to store"):
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
        base = (no << _SEQ_BITS) + start
        insert = "INSERT INTO log (k, idx, id, sig, body) VALUES (?, ?, ?, ?, ?)"
        if len(rows) == 1:  # one statement commits by itself (or joins the open transaction)
            nid, sig, body = rows[0]
            db.execute(insert, (base, first, nid, sig, body))
        else:
            with self._transaction():
                db.executemany(
                    insert, [(base + i, first + i, r[0], r[1], r[2]) for i, r in enumerate(rows)]
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
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            self._load()
            raise

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
        db = self._db
        with self._errors("cannot write to store"), self._transaction():
            no = self._no(origin)
            base = no << _SEQ_BITS
            cur = db.execute(
                "INSERT OR IGNORE INTO dropped SELECT ?, n.k - ?, n.id, n.sig, n.body,"
                " coalesce(a.root, n.id), coalesce(a.root_seqno, n.k - ?),"
                " coalesce(a.shown, n.body), CASE WHEN a.hidden THEN NULL ELSE n.idx END"
                " FROM log n LEFT JOIN again a ON a.origin = ? AND a.seqno = n.k - ?"
                " WHERE n.k >= ? AND n.k <= ?",
                (no, base, base, no, base, base + start, base | _MAX_SEQ),
            )
            if cur.rowcount:
                self._dropped_shown = True
            db.execute("DELETE FROM again WHERE origin = ? AND seqno >= ?", (no, start))
            db.execute("DELETE FROM log WHERE k >= ? AND k <= ?", (base + start, base | _MAX_SEQ))
            bad = self.damaged.get(origin)
            if bad:  # what was damaged there is gone: the new rows are checked as they come
                bad.difference_update({q for q in bad if q >= start})
                if not bad:
                    del self.damaged[origin]
            replaced = {at for at in (*self.damaged_at, *self.unrepairable, *self._index_unknown)
                        if at[0] == origin and at[1] >= start}
            for at in replaced:
                self.damaged_at.pop(at, None)
            self.unrepairable -= replaced
            self._index_unknown -= replaced
            self._load_span(no)
            first = self.next_index
            if rows:
                first = self._append(origin, start, rows)
            if again:
                self._add_again(origin, again)
        return first

    def off_chain_ids(self, origin: bytes, seqno: int) -> list[bytes]:
        """Ids of the notes at `seqno` of `origin` held off its chain (see `keep`)."""
        no = self._origin_no.get(origin)
        if no is None or seqno < 0:
            return []
        return [bytes(r[0]) for r in self._fetch(
            "SELECT id FROM dropped WHERE origin = ? AND seqno = ?", (no, seqno))]

    def keep(self, origin: bytes, notes: Sequence[Dropped]) -> int:
        """Keep notes of `origin` that are not on its chain here (never shown here);
        returns how many were new."""
        with self._errors("cannot write to store"), self._transaction():
            no = self._no(origin)
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO dropped VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [(no, *note) for note in notes],
            )
            return self._db.total_changes - before

    def repair(self, origin: bytes, seqno: int, row: Row) -> int | None:
        """Put back a damaged note, as a peer sent it (its chain checked and signed), at its
        old arrival index, which is returned. A note whose row (or index) is gone gets back
        the one index its neighbours leave free; if that cannot be found, it is given up
        (added to `unrepairable`, no longer damaged: never asked for again). None if it is
        not marked damaged here, or was given up."""
        bad = self.damaged.get(origin)
        no = self._origin_no.get(origin)
        if bad is None or seqno not in bad or no is None:
            return None
        k = (no << _SEQ_BITS) | seqno
        sig = row[1]
        with self._errors("cannot write to store"):
            old = self._fetchone("SELECT sig, idx, id, body FROM log WHERE k = ?", (k,))
            if sig is None and old is not None and isinstance(old[0], bytes) and verify(
                    origin, old[0], row[0]):
                # keep the signature stored there if it still holds (it marks where a batch
                # as received ended); a damaged one goes
                sig = old[0]
            index = old[1] if old is not None and type(old[1]) is int else \
                self.damaged_at.get((origin, seqno))  # found when a read skipped it
            if index is None:
                index = self._free_index(no, seqno)
            if (old is not None and type(old[1]) is int and old[2] == row[0]
                    and old[3] == row[2] and old[0] == sig
                    and (origin, seqno - 1) in self.unrepairable):
                # intact: what fails is its link, to a note before it that could not be put
                # back; writing it again would change nothing (and deliver it again)
                index = None
            if index is not None:
                self._db.execute(
                    "INSERT INTO log (k, idx, id, sig, body) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (k) DO UPDATE SET idx = excluded.idx, id = excluded.id,"
                    " sig = excluded.sig, body = excluded.body",
                    (k, index, row[0], sig, row[2]))
        bad.discard(seqno)
        if not bad:
            del self.damaged[origin]
        self.damaged_at.pop((origin, seqno), None)
        if index is None:
            self.unrepairable.add((origin, seqno))
            return None
        if old is None or old[1] != index or seqno == self._spans[no].last:
            self._load_span(no)  # a row put back, or the head's id: what is kept in memory
        return int(index)

    def _free_index(self, no: int, seqno: int) -> int | None:
        """The arrival index a lost note of origin `no` at `seqno` had. Indices grow with the
        seqno within an origin, so it lies between the indices of the rows held around it,
        and no other note holds it: of the indices free there, the lost notes take them in
        seqno order. Found by bisection on how many indices each origin's notes take below a
        point (a binary search per origin), so a wide gap costs no more than a narrow one.
        None if there is none free."""
        base = no << _SEQ_BITS
        below = self._fetchone("SELECT k, idx FROM log WHERE k >= ? AND k < ? ORDER BY k DESC"
                               " LIMIT 1", (base, base + seqno))
        above = self._fetchone("SELECT idx FROM log WHERE k > ? AND k <= ? ORDER BY k"
                               " LIMIT 1", (base + seqno, base | _MAX_SEQ))
        lo = below[1] if below is not None and type(below[1]) is int else -1
        hi = above[0] if above is not None and type(above[0]) is int else self.next_index
        nth = seqno - (below[0] - base + 1 if below is not None else 0)  # lost ones before it
        others = [o for o, span in self._spans.items()
                  if o != no and span.last_index > lo and span.first_index < hi]
        if hi - lo - 1 <= _SCAN_INDICES:  # narrow: look at every index (exact even when
            used: set[int] = set()       # another origin lost a row there too)
            for other in others:
                obase = other << _SEQ_BITS
                # from a little before where its notes pass `lo`: a row it lost too would
                # put that point late
                begin = max(0, self._taken_below(other, lo + 1) - 64)
                rows = self._fetch("SELECT idx FROM log WHERE k >= ? AND k <= ? ORDER BY k"
                                   " LIMIT ?", (obase + begin, obase | _MAX_SEQ, hi - lo + 64))
                used.update(i for (i,) in rows if type(i) is int and lo < i < hi)
            used.update(i for (i,) in self._fetch(
                "SELECT idx FROM dropped WHERE idx > ? AND idx < ?", (lo, hi)))
            free_ones = [i for i in range(lo + 1, hi) if i not in used]
            return free_ones[nth] if nth < len(free_ones) else None

        def free(a: int, b: int) -> int:  # indices in [a, b) no note holds
            used = sum(self._taken_below(o, b) - self._taken_below(o, a) for o in others)
            used += int(self._fetchone("SELECT count(*) FROM dropped WHERE idx >= ?"
                                       " AND idx < ?", (a, b))[0])
            return (b - a) - used

        if hi - lo - 1 < 1 or free(lo + 1, hi) <= nth:
            return None
        left, right = lo + 1, hi - 1  # the smallest m with nth + 1 free in [lo + 1, m]
        while left < right:
            mid = (left + right) // 2
            if free(lo + 1, mid + 1) > nth:
                right = mid
            else:
                left = mid + 1
        return left

    def _taken_below(self, no: int, index: int) -> int:
        """How many notes of origin `no` have an index below `index` (its log held from
        seqno 0 without a gap)."""
        span = self._spans[no]
        if index <= span.first_index:
            return 0
        if index > span.last_index:
            return span.last + 1
        return self._first_at(no, index)

    def add_fork(self, fork: Fork) -> bool:
        """Record a fork once per (origin, seqno); True if it is new."""
        with self._errors("cannot write to store"):
            cur = self._db.execute(
                "INSERT OR IGNORE INTO forks VALUES (?, ?, ?, ?, ?)",
                (fork.origin, fork.seqno, fork.kept, fork.lost, fork.evidence),
            )
        return cur.rowcount == 1

    def _load(self) -> None:
        """Read again what is kept in memory of every origin."""
        self._origin_no = {}
        for origin, no in self._db.execute("SELECT origin, no FROM origins").fetchall():
            if isinstance(origin, bytes) and type(no) is int:
                self._origin_no[origin] = no
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
            shown_max + 1 if type(shown_max) is int else 0,
        )

    def _load_span(self, no: int) -> None:
        base = no << _SEQ_BITS
        row = self._db.execute(
            "SELECT k, id, idx FROM log WHERE k >= ? AND k <= ? ORDER BY k DESC LIMIT 1",
            (base, base | _MAX_SEQ),
        ).fetchone()
        if row is None:
            self._spans.pop(no, None)
            return
        first = self._db.execute(
            "SELECT idx FROM log WHERE k >= ? ORDER BY k LIMIT 1", (base,)
        ).fetchone()[0]
        k, last_id, last_idx = row
        if not 0 <= k - base <= _MAX_SEQ:  # a damaged B-tree: see _run
            k = base
        elif k > base and self._db.execute("SELECT 1 FROM log WHERE k = ?", (k - 1,)
                                           ).fetchone() is None:
            k = self._key_back(no, k, last_id)
        if not (_is_id(last_id) and type(last_idx) is int and type(first) is int):
            # a damaged tip: keep the log usable; the bad note shows on its next read
            last_id = last_id if _is_id(last_id) else bytes(ID_SIZE)
            last_idx = last_idx if type(last_idx) is int else 0
            first = first if type(first) is int else 0
        self._spans[no] = _Span(first, k - base, last_id, last_idx)

    def _key_back(self, no: int, k: int, nid: object) -> int:
        """The last row of origin `no` sits at key `k` past a gap. It may be the note after
        the gap (a row before it lost: that one is fetched again), or the last note with a
        damaged key, which would make the origin look longer than it is (our own next note
        would be published past a hole). If its id is the note that belongs right after the
        gap, it is moved back there; its key is returned."""
        base = no << _SEQ_BITS
        below = self._db.execute("SELECT k, id FROM log WHERE k >= ? AND k < ? ORDER BY k DESC"
                                 " LIMIT 1", (base, k)).fetchone()
        seq, prev = (below[0] - base + 1, below[1]) if below is not None else (0, GENESIS)
        row = self._fetchone("SELECT body FROM log WHERE k = ?", (k,))
        body = None if row is None else row[0]  # None: a damaged B-tree, found one way only
        if _links(self._origins[no], seq, prev, body, nid):
            with contextlib.suppress(sqlite3.Error):  # unfixable here: reads still check it
                self._db.execute("UPDATE log SET k = ? WHERE k = ?", (base + seq, k))
                return base + seq
        return k

    # -- what forks left -----------------------------------------------------------------
    def delivered(self, origin: bytes, root: bytes, root_seqno: int) -> bool:
        """Whether a note carrying the body of note `root` was shown here: on the chain, or
        before it left the chain."""
        with self._errors("cannot read store"):
            no = self._origin_no.get(origin)
            if no is None:
                return False
            db = self._db
            return (
                db.execute("SELECT 1 FROM dropped WHERE origin = ? AND root = ?"
                           " AND idx IS NOT NULL", (no, root)).fetchone() is not None
                or self.id_at(origin, root_seqno) == root
                or db.execute("SELECT 1 FROM again WHERE origin = ? AND root = ? AND NOT hidden",
                              (no, root)).fetchone() is not None
            )

    def owed(self, origin: bytes, *, after: tuple[int, bytes] = (-1, b""),
             limit: int = -1) -> list[Dropped]:
        """Notes of `origin` off its chain here whose body the chain does not carry (as the
        note itself or published again), by (seqno, id), past `after`, at most `limit` (-1:
        all): what its origin must publish again."""
        with self._errors("cannot read store"):
            no = self._origin_no.get(origin)
            if no is None:
                return []
            return [
                (seqno, bytes(nid), sig, body, bytes(root), root_seqno, shown)
                for seqno, nid, sig, body, root, root_seqno, shown in self._db.execute(
                    "SELECT d.seqno, d.id, d.sig, d.body, d.root, d.root_seqno, d.shown"
                    " FROM dropped d WHERE d.origin = ? AND (d.seqno, d.id) > (?, ?)"
                    " AND NOT EXISTS (SELECT 1 FROM log n"
                    f"                 WHERE n.k = (d.origin << {_SEQ_BITS}) | d.root_seqno"
                    "                 AND n.id = d.root)"
                    " AND NOT EXISTS (SELECT 1 FROM again a WHERE a.origin = d.origin"
                    "                 AND a.root = d.root)"
                    " ORDER BY d.seqno, d.id LIMIT ?",
                    (no, *after, limit),
                )
            ]

    def owed_pages(self, origin: bytes, page: int) -> Iterator[Dropped]:
        """`owed(origin)`, read `page` notes at a time as it is consumed (no cursor is held
        between pages, so writes may come between them)."""
        after = (-1, b"")
        while True:
            rows = self.owed(origin, after=after, limit=page)
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][1])

    def published_again(self, origin: bytes, since: int) -> tuple[int, int, int]:
        """(how many, first seqno, last seqno) of chain notes of `origin` that carry bodies of
        notes at `since` or later, published again; (0, -1, -1) if none."""
        with self._errors("cannot read store"):
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
        with self._errors("cannot read store"):
            no = self._origin_no.get(origin)
            if no is None:
                return 0
            return int(self._db.execute(
                "SELECT count(*) FROM dropped WHERE origin = ? AND seqno >= ?", (no, since)
            ).fetchone()[0])

    # -- reads ---------------------------------------------------------------------------
    def read(self, origin: bytes, start: int, end: int) -> list[Row]:
        """Notes [start, end) of `origin` that are held, in order, up to the first one that
        fails its hash link (which is recorded as damaged)."""
        no = self._origin_no.get(origin)
        if no is None or start >= end:
            return []
        base = no << _SEQ_BITS
        lo = max(start - 1, 0)
        rows = self._fetch(
            "SELECT k, id, sig, body FROM log WHERE k >= ? AND k < ? ORDER BY k",
            (base + lo, base + min(end, _MAX_SEQ + 1)),
        )
        prev: object = GENESIS
        expect = lo
        out: list[Row] = []
        for k, nid, sig, body in rows:
            seqno = k - base
            if seqno != expect:
                break  # a gap: the key of the missing note was damaged
            expect += 1
            if seqno < start:
                prev = nid
                continue
            if not (
                _is_id(prev) and _is_id(nid) and isinstance(body, str | bytes)
                and (sig is None or (isinstance(sig, bytes) and len(sig) == SIG_SIZE))
                and note_id(origin, seqno, prev, body) == nid  # type: ignore[arg-type]
            ):
                self._damage(origin, seqno)
                break
            out.append((nid, sig, body))
            prev = nid
        return out

    def next_signed(self, origin: bytes, start: int) -> int | None:
        """The first seqno >= start whose signature is stored."""
        no = self._origin_no.get(origin)
        if no is None:
            return None
        base = no << _SEQ_BITS
        row = self._fetchone(
            "SELECT k FROM log WHERE k >= ? AND k <= ? AND sig IS NOT NULL ORDER BY k LIMIT 1",
            (base + start, base | _MAX_SEQ),
        )
        if row is None or not start <= row[0] - base <= _MAX_SEQ:  # see _run
            return None
        return int(row[0]) - base

    def id_at(self, origin: bytes, seqno: int) -> bytes | None:
        """The stored id at `seqno` (a damaged one shows when the notes after it are read)."""
        no = self._origin_no.get(origin)
        if no is None:
            return None
        row = self._fetchone("SELECT id FROM log WHERE k = ?", ((no << _SEQ_BITS) | seqno,))
        return bytes(row[0]) if row is not None and _is_id(row[0]) else None

    def replay(self, start: int = 0, end: int | None = None, chunk: int = 1000) -> Iterator[Note]:
        """Notes with start <= index < end that are held when this is called, in arrival
        order, each checked against its hash link (a damaged one is left out). The origins'
        logs are read `chunk` notes at a time between them, so memory stays flat however long
        the history. It costs a binary search for each origin that has notes both before and
        inside the range: O(log n) for the few members of a group, more for a store with
        thousands of origins all active at once."""
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
        search on the key, as the index grows with the seqno within an origin. An origin's
        notes are held from seqno 0 without a gap and no two share an index, so the answer is
        at least `index` minus the tail's distance: a reader near the end searches a window
        as wide as how far back it reads, whatever the history."""
        span = self._spans[no]
        if span.first_index >= index:
            return 0
        base = no << _SEQ_BITS
        lo, hi = max(0, span.last - (span.last_index - index)), span.last
        while lo < hi:
            mid = (lo + hi) // 2
            row = self._fetchone(
                "SELECT idx FROM log WHERE k >= ? ORDER BY k LIMIT 1", (base + mid,)
            )
            if row is None or type(row[0]) is not int or row[0] >= index:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _run(self, no: int, seqno: int, stop: int, chunk: int) -> Iterator[Note]:
        """Origin `no`'s intact notes from `seqno` on whose index is below `stop`."""
        origin = self._origins[no]
        base = no << _SEQ_BITS
        end = base | _MAX_SEQ
        prev: object = GENESIS
        if seqno > 0:
            row = self._fetchone("SELECT id FROM log WHERE k = ?", (base + seqno - 1,))
            prev = None if row is None else row[0]
        expect = seqno
        while True:
            rows = self._fetch(
                "SELECT k, body, id, idx FROM log WHERE k >= ? AND k <= ? ORDER BY k LIMIT ?",
                (base + seqno, end, chunk),
            )
            again = self._again_in(no, rows[0][0] - base, rows[-1][0] - base) if (
                rows and no in self._again) else {}
            for k, body, nid, idx in rows:
                seq = k - base
                if seq != expect:
                    # A damaged key: the note that belongs here is missing or moved. (A
                    # damaged B-tree can even hand back rows outside the range asked.)
                    self._damage(origin, expect, self._lost_index(no, origin, expect))
                    if not expect < seq <= _MAX_SEQ:
                        continue
                    expect = seq
                if type(idx) is int and _links(origin, seq, prev, body, nid):
                    if idx >= stop:
                        return
                    extra = again.get(seq) if again else None
                    if extra is None:
                        yield Note(origin, seq, body, nid, idx)
                    elif not extra[0]:  # a body published again: shown unless seen here
                        # the body shown is the last item of the (checked) body carrying it
                        if isinstance(body, bytes) and _ends_with_item(body, extra[1]):
                            yield Note(origin, seq, extra[1], nid, idx)
                        else:
                            self._damage(origin, seq, idx)
                else:
                    self._damage(origin, seq, idx if type(idx) is int else
                                 self._lost_index(no, origin, seq))
                prev, expect = nid, seq + 1
            if len(rows) < chunk:
                return
            seqno = rows[-1][0] - base + 1
            # indices grow within an origin: no more than this many of its notes are left
            # below `stop` (reading a full chunk past the range doubled a short read's cost)
            if type(rows[-1][3]) is int:
                chunk = min(chunk, stop - rows[-1][3] - 1)
                if chunk <= 0:
                    return

    def _again_in(self, no: int, lo: int, hi: int) -> dict[int, tuple[bool, Body]]:
        """seqno -> (hidden, body shown) of chain notes lo..hi of origin `no` that carry a
        body published again (see log.py)."""
        return {
            seq: (bool(hidden), shown) for seq, hidden, shown in self._fetch(
                "SELECT seqno, hidden, shown FROM again WHERE origin = ? AND seqno >= ?"
                " AND seqno <= ?", (no, lo, hi))
        }

    def _dropped_run(self, start: int, stop: int, chunk: int) -> Iterator[Note]:
        """Notes shown here before they left their chain, by index, each checked against its
        hash link as chain notes are (one that fails is left out and counted)."""
        while True:
            rows = self._fetch(
                "SELECT d.idx, o.origin, d.seqno, d.shown, d.id, d.body, d.origin FROM dropped d"
                " JOIN origins o ON o.no = d.origin"
                " WHERE d.idx >= ? AND d.idx < ? ORDER BY d.idx LIMIT ?",
                (start, stop, chunk),
            )
            for idx, origin, seq, shown, nid, body, no in rows:
                if self._dropped_intact(bytes(origin), seq, nid, body, shown):
                    yield Note(bytes(origin), seq, shown, bytes(nid), idx)
                else:
                    self.damaged_off_chain.add((no, seq, nid))
            if len(rows) < chunk:
                return
            start = rows[-1][0] + 1

    def _dropped_intact(self, origin: bytes, seq: object, nid: object, body: object,
                        shown: object) -> bool:
        """Whether a note off the chain still matches its id: it links to the chain note
        before it or to another note off the chain there (the branches split below it), and
        the body shown is its body or the one it published again."""
        if not (type(seq) is int and 0 <= seq <= _MAX_SEQ and isinstance(shown, str | bytes)):
            return False
        if shown != body and not (isinstance(body, bytes) and _ends_with_item(body, shown)):
            return False
        prevs = [GENESIS] if seq == 0 else [self.id_at(origin, seq - 1),
                                            *self.off_chain_ids(origin, seq - 1)]
        return any(_links(origin, seq, p, body, nid) for p in prevs)

    def _fetch(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "decode" not in str(e):
                raise _error(e, f"cannot read store {self.path or '(memory)'}") from None
        except sqlite3.Error as e:
            raise _error(e, f"cannot read store {self.path or '(memory)'}") from None
        # A text body whose bytes changed may no longer be UTF-8: read it as a value that
        # fails every check instead of failing the whole read.
        self._db.text_factory = _lenient_text
        try:
            with self._errors("cannot read store"):
                return self._db.execute(sql, args).fetchall()
        finally:
            self._db.text_factory = str

    def _fetchone(self, sql: str, args: tuple[object, ...]) -> Any:
        rows = self._fetch(sql, args)
        return rows[0] if rows else None

    def mark_damaged(self, origin: bytes, seqno: int) -> None:
        """Record that note `seqno` of `origin` is damaged here (a check above the store,
        such as a stored signature that fails, found it)."""
        self._damage(origin, seqno)

    def _lost_index(self, no: int, origin: bytes, seqno: int) -> int | None:
        """The index of a note whose row (or index) is gone, once: what a read skipped."""
        at = (origin, seqno)
        if at in self.damaged_at or at in self.unrepairable or at in self._index_unknown:
            return None
        index = self._free_index(no, seqno)
        if index is None:
            self._index_unknown.add(at)  # not looked for again on every read
        return index

    def _damage(self, origin: bytes, seqno: int, index: object = None) -> None:
        if not 0 <= seqno <= _MAX_SEQ or (origin, seqno) in self.unrepairable:
            return
        if type(index) is int and len(self.damaged_at) < MAX_DAMAGED:
            self.damaged_at[(origin, seqno)] = index
        bad = self.damaged.setdefault(origin, set())
        if seqno in bad or len(bad) >= MAX_DAMAGED:
            return
        bad.add(seqno)
        if self.on_damage is not None:
            self.on_damage(origin, seqno)

    def check(self, step: int = 10_000) -> Iterator[CheckProgress]:
        """Verify the whole store: SQLite's integrity_check, every note's hash link, and one
        signature per signed run (a stored signature vouches for the chain behind it; our
        own notes carry none: we sign when serving). Yields progress every `step` notes and
        once at the end; damage found is recorded as reads record it."""
        with self._errors("cannot check store"):
            problems = [str(r[0]) for r in self._db.execute("PRAGMA integrity_check(20)")]
        integrity = [] if problems == ["ok"] else problems
        total = sum(s.last + 1 for s in self._spans.values())
        checked = 0
        for no, span in list(self._spans.items()):
            origin = self._origins[no]
            pos = 0
            while pos <= span.last:
                end = min(pos + step, span.last + 1)
                rows = self.read(origin, pos, end)
                for i, (nid, sig, _) in enumerate(rows):
                    if sig is not None and not verify(origin, sig, nid):
                        self._damage(origin, pos + i)
                checked += end - pos
                if len(rows) < end - pos:
                    # read stops at damage: go on after it
                    bad = pos + len(rows)
                    self._damage(origin, bad)
                    end = bad + 1
                pos = end
                yield CheckProgress(checked, total, self._damage_report(), integrity)
        yield CheckProgress(checked, total, self._damage_report(), integrity)

    def _damage_report(self) -> dict[bytes, list[int]]:
        return {o: sorted(s) for o, s in self.damaged.items()}

    # -- app notes -----------------------------------------------------------------------
    def _open_app_index(self) -> None:
        self._db.create_function("zflood_app", 1, app_of, deterministic=True)
        # The first open since the index came builds it once, from what the store holds, in
        # the same transaction as the table and its triggers (made again if a migration of
        # the log's layout dropped them).
        built = self.get_meta("app_index") is not None
        if built and self._fetchone(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'app_notes_dropped'",
            (),
        ) is not None:
            return  # nothing to write: a store on a full disk opens too
        backfill = "" if built else _APP_BACKFILL
        try:
            self._db.executescript(
                f"BEGIN; {_APP_SCHEMA} {backfill}"
                " INSERT OR REPLACE INTO meta VALUES ('app_index', 1); COMMIT;"
            )
        except BaseException:
            _rollback(self._db)
            raise

    def app_notes(self, app: str, start: int = 0, end: int | None = None,
                  limit: int = 1000) -> tuple[list[Note], int]:
        """`app`'s held notes with start <= index < end, at most `limit`, in arrival order,
        and the index below which every note of `app` has been returned. Each is checked
        against its hash link, as replay checks it."""
        stop = self.next_index if end is None else min(end, self.next_index)
        if start >= stop:
            return [], start
        forked = bool(self._again) or self._dropped_shown
        rows = self._fetch(_APP_READ_FORKED if forked else _APP_READ, (app, start, stop, limit))
        notes: list[Note] = []
        for idx, no, seq, n_idx, body, nid, pid, hidden, shown, d_shown, d_id, d_body in rows:
            origin = self._origins.get(no)
            if origin is None or type(seq) is not int:
                continue
            if n_idx == idx:  # on the chain
                if not _links(origin, seq, GENESIS if seq == 0 else pid, body, nid):
                    self._damage(origin, seq, idx)
                    continue
                if hidden is not None:  # it carries a body published again
                    if hidden:
                        continue
                    if not (isinstance(body, bytes) and _ends_with_item(body, shown)):
                        self._damage(origin, seq, idx)
                        continue
                    body = shown
                notes.append(Note(origin, seq, body, nid, idx))
            elif d_id is not None:  # shown here before it left its chain
                if self._dropped_intact(origin, seq, d_id, d_body, d_shown):
                    notes.append(Note(origin, seq, d_shown, bytes(d_id), idx))
                else:
                    self.damaged_off_chain.add((no, seq, d_id))
        return notes, stop if len(rows) < limit else rows[-1][0] + 1

    def app_before(self, app: str, index: int) -> int:
        """The index of `app`'s last held note below `index`, or -1."""
        row = self._fetchone(
            "SELECT max(idx) FROM app_notes WHERE app = ? AND idx < ?", (app, index)
        )
        return -1 if row is None or type(row[0]) is not int else int(row[0])

    def forks(self) -> list[Fork]:
        with self._errors("cannot read store"):
            return [
                Fork(*row)
                for row in self._db.execute(
                    "SELECT origin, seqno, ours, theirs, evidence FROM forks ORDER BY origin, seqno"
                )
            ]

    def wal_size(self) -> int:
        """Bytes in the WAL file now (0 for a store in memory)."""
        if self.path is None:
            return 0
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def fit_wal(self) -> int:
        """Set the WAL's bound to an eighth of the free space, within its range; returns it.
        A checkpoint copies the WAL into the database and syncs both: a few ms, paid once
        per bound's worth of commits (tools/bench_engine.py measures it). Without a bound the
        WAL grew to 40 MB and filled a small disk by itself."""
        low, high = self._wal_range
        free = self._free()
        bound = high if free is None else max(low, min(high, free // 8))
        bound -= bound % self._page
        if bound != self.wal_bound:
            self.wal_bound = bound
            self._db.execute(f"PRAGMA wal_autocheckpoint={max(1, bound // self._page)}")
            self._db.execute(f"PRAGMA journal_size_limit={bound}")
        return bound

    def _free(self) -> int | None:
        if self.path is None:
            return None
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def has_room(self, need: int) -> bool:
        """Whether the disk holding the store has `need` bytes free (True if unknown)."""
        if self.path is None:
            return True
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return True
        return st.f_bavail * st.f_frsize >= need

    def close(self) -> None:
        """Merge the WAL into the database (a clean stop leaves one file) and close."""
        if self.wal_size():
            with contextlib.suppress(sqlite3.Error):  # a full disk: the WAL stays, as safe
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()


class _Span(NamedTuple):
    """What the store keeps in memory of one origin's log: O(origins), not O(history)."""

    first_index: int  # arrival index of seqno 0
    last: int  # seqno of the last note
    last_id: bytes
    last_index: int


class _BadText:
    """A text value that is not UTF-8 any more: no check accepts it."""


def _lenient_text(raw: bytes) -> object:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return _BadText()


def _ends_with_item(body: bytes, inner: object) -> bool:
    try:
        return isinstance(inner, str | bytes) and body.endswith(cbor2.dumps(inner))
    except Exception:
        return False


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (a full disk at COMMIT)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _links(origin: bytes, seqno: int, prev: object, body: object, nid: object) -> bool:
    """Whether stored values are an intact note: `nid` is the id of `body` at `seqno` of
    `origin` after note `prev` (its hash link). Anything a damaged file can hand back fails."""
    return (_is_id(prev) and _is_id(nid) and isinstance(body, str | bytes)
            and note_id(origin, seqno, prev, body) == nid)  # type: ignore[arg-type]


def _is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == ID_SIZE


def _index(note: Note) -> int:
    return note.index


def _error(e: sqlite3.Error, doing: str) -> StoreError:
    """One line for what went wrong with our own store."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL or getattr(e, "errno", None) == errno.ENOSPC:
        return StoreFull(f"{doing}: the disk is full (free some space; zflood resumes by itself)")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(e):
        return StoreDamaged(f"{doing}: the store is damaged ({e}); run zflood check")
    return StoreError(f"{doing}: {e}")


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

