"""Members: each origin's human name and what this node knows of it, derived from the notes.

Theory of operation. A member names itself with an app note of its own origin, a CBOR map
`{"app": "zflood", "name": NAME, "time": UNIX}` (`time` is the author's clock, for display
only). Only an origin's own signed log can carry it, so nobody can name another member, and
the note with the highest seqno wins, so every member holding the same notes agrees, whatever
order they arrived in.

`Members` is a table derived from the notes: per origin, its name, the seqno of the note that
set it, and when its latest note arrived *here* (local wall-clock time; the author's time in a
name note says nothing of its other notes). It is fed every delivered note (`see`), which costs
a dict update, and a byte search for the rare note that may be a name. It lives in the store's
meta rows (`member/<origin hex>`, plus `members/next`, the arrival index it is complete up
to), written by `save`; `load` reads them and replays only the notes that arrived after
`next`, never the whole history. Replaying notes whose arrival was not seen (after a crash,
or written by an offline command) gives them the time of the replay. This module reads no
clock and does no I/O of its own: times are passed in.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cbor2

from .appnote import app_of
from .errors import LocalError

if TYPE_CHECKING:
    from .node import Node
    from .store import Body, Note

APP = "zflood"
#: Longest name, in characters.
MAX_NAME = 64
#: A name note is a small CBOR map: anything larger is some other app's note, not parsed.
_MAX_NAME_NOTE = 1024
#: "app": "zflood" as CBOR writes it (definite-length text, as every encoder writes short
#: strings): a body without these bytes is no name note, and most notes stop at this search.
_MARK = b"\x63app\x66zflood"
_META_NEXT = "members/next"
_META_ROW = "member/"
_SHORT = 8  # hex digits of an origin id shown wherever a name is not enough


def short(origin: bytes | str) -> str:
    """The one short form of a member id: its first 8 hex digits."""
    return (origin.hex() if isinstance(origin, bytes) else origin)[:_SHORT]


def check_name(name: str) -> str:
    """`name` without surrounding blanks, if it can be a member's name; else LocalError."""
    name = name.strip()
    if not name:
        raise LocalError("a member name cannot be empty")
    if len(name) > MAX_NAME:
        raise LocalError(f"a member name is at most {MAX_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise LocalError("a member name cannot hold control or format characters")
    return name


def name_note(name: str, time: float) -> bytes:
    """The body of the note by which a member calls itself `name` (checked first)."""
    return cbor2.dumps({"app": APP, "name": check_name(name), "time": round(time, 3)})


def parse_name(body: Body) -> str | None:
    """The name a note's body sets, or None if it is not a valid name note."""
    if (
        type(body) is not bytes
        or len(body) > _MAX_NAME_NOTE
        or _MARK not in body  # most notes stop here, cheaply
        or app_of(body) != APP  # what every app note is checked by
    ):
        return None
    name = cbor2.loads(body).get("name")  # app_of decoded it: a map, nothing after it
    if not isinstance(name, str):
        return None
    try:
        return check_name(name)
    except LocalError:
        return None


@dataclass
class Member:
    origin: bytes
    name: str | None = None
    name_seqno: int = -1  # of the note that set `name`
    last_at: float | None = None  # local wall-clock time its latest note arrived here

    def label(self) -> str:
        """How logs and the CLI name it: `name (1a2b3c4d)`, or the short id alone."""
        return f"{self.name} ({short(self.origin)})" if self.name else short(self.origin)


class Members:
    """The derived table; see the module docstring."""

    def __init__(self) -> None:
        self._members: dict[bytes, Member] = {}
        self._dirty: set[bytes] = set()
        self.next = 0  # the arrival index of the first note not yet seen
        # A save in rounds: the rows changed up to `_round_next`, still to be written
        self._round: list[bytes] = []
        self._round_next = 0

    @classmethod
    def load(cls, node: Node, now: float) -> Members:
        """The table saved in `node`'s store, brought up to date with what arrived since."""
        self = cls()
        nxt = node.get_meta(_META_NEXT)
        self.next = nxt if type(nxt) is int and 0 <= nxt <= node.count else 0
        for origin in node.heads if self.next else ():
            member = self._members[origin] = Member(origin)
            row = node.get_meta(_META_ROW + origin.hex())
            if row is None:
                continue  # its first note came after the last save: the replay sees it
            try:
                name, seqno, at = cbor2.loads(row)
                member.name = None if name is None else check_name(name)
                member.name_seqno = int(seqno)
                member.last_at = None if at is None else float(at)
            except Exception:  # a row that does not read back: derive the table afresh
                self._members.clear()
                self.next = 0
                break
        for note in node.notes(self.next):
            self.see(note, now)
        return self

    def see(self, note: Note, now: float) -> str | None:
        """Take a delivered note; returns the new name if it renamed its origin."""
        origin = note.origin
        member = self._members.get(origin)
        if member is None:
            member = self._members[origin] = Member(origin)
        member.last_at = now
        self._dirty.add(origin)
        index = note.index
        if index >= self.next:
            self.next = index + 1
        body = note.body
        if type(body) is not bytes or _MARK not in body:  # the usual case, without a call
            return None
        name = parse_name(body)
        if name is not None and note.seqno > member.name_seqno:
            member.name_seqno = note.seqno
            if name != member.name:
                member.name = name
                return name
        return None

    def save(self, node: Node, most: int | None = None) -> bool:
        """Write what changed into `node`'s store: at most `most` rows a call (None: all),
        in one transaction; True once all of it is written. A member gone bad can mint
        thousands of origins, and one call writing every row held the loop for 360 ms. The
        arrival index the table is whole up to is written after the last row of a round, so
        a store opened in between replays from the round before, never past a row not
        written."""
        if most is None and self._dirty:  # all of it: this round and what changed since
            self._round = sorted(set(self._round) | self._dirty)
            self._dirty, self._round_next = set(), self.next
        if not self._round:
            if not self._dirty and node.get_meta(_META_NEXT) == self.next:
                return True
            self._round, self._dirty = sorted(self._dirty), set()
            self._round_next = self.next
        take = self._round if most is None else self._round[:most]
        rows: dict[str, object] = {
            _META_ROW + m.origin.hex(): cbor2.dumps([m.name, m.name_seqno, m.last_at])
            for m in map(self._members.__getitem__, take)
        }
        if not take or len(take) == len(self._round):
            rows[_META_NEXT] = self._round_next
        node.set_meta_many(rows)
        del self._round[:len(take)]
        return not self._round and not self._dirty

    def get(self, origin: bytes) -> Member:
        return self._members.get(origin) or Member(origin)

    def name(self, origin: bytes) -> str | None:
        member = self._members.get(origin)
        return None if member is None else member.name

    def label(self, origin: bytes) -> str:
        return self.get(origin).label()

    def __iter__(self) -> Iterator[Member]:
        return iter(list(self._members.values()))

    def names(self) -> dict[str, str]:
        """Origin hex -> name, for every named member."""
        return {m.origin.hex(): m.name for m in self._members.values() if m.name}

