"""The bookmark tree as every member derives it: a pure function of the set of bookmark notes.

A bookmark note is an app note `{"app": "bookmarks", "c": CLOCK, "ops": [OP, ...]}`. Each OP
names one item by its id (`"i"`, a UUID made once and never changed; the three roots are the
fixed ids `bar`, `other` and `mobile`) and writes some of its fields: `k` kind ("f" folder,
"b" bookmark), `t` title, `u` URL, `g` tags, `a` added and `m` modified (microseconds since
1970), `p` [parent id, position key] (a move: see `position`), `d` true (a delete).

Every write carries the stamp (clock, origin, seqno, op index): CLOCK is a Lamport clock
(one more than the largest clock the author had seen), so a write made after seeing another
sorts after it, and concurrent writes are ordered by origin, never by arrival. The tree is
derived from the writes alone, so members holding the same notes hold the same tree whatever
order the notes came in:

- Fields: each field is its own last-writer-wins register, so concurrent edits of different
  fields both survive.
- Deletes leave a tombstone. An item is deleted when its latest write is the delete: a delete
  wins over every edit it had seen and over concurrent edits with an earlier stamp; an edit or
  move stamped later than the delete (made concurrently, by a member that had not seen it)
  brings the item back with all its latest fields, because that member meant to keep it and no
  write is thrown away silently. A deleted folder's live contents (added or moved into it
  concurrently) move up to its nearest live ancestor rather than vanish.
- Moves: all moves are applied in stamp order, and a move that would put a folder inside
  itself (concurrent moves of A into B and B into A) is skipped, by every member alike, so the
  tree never holds a cycle. A move into something that is not a folder is skipped too. An item
  whose folder is not known yet (its note still on the way) shows under `other` until it is.
- Order within a folder: by position key, then id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import position

APP = "bookmarks"
ROOTS = ("bar", "other", "mobile")
ROOT_TITLES = {"bar": "Bookmarks bar", "other": "Other bookmarks", "mobile": "Mobile bookmarks"}
FOLDER, BOOKMARK = "f", "b"

Stamp = tuple[int, bytes, int, int]  # (clock, origin, seqno, op index)
Op = dict[str, Any]
_FIELDS = frozenset(("k", "t", "u", "g", "a", "m"))
MAX_TEXT = 64 * 1024  # longest title or URL taken from a note
_NONE: tuple[Stamp, Any] = ((0, b"", 0, 0), "")  # an unwritten field's value
_NONE_TAGS: tuple[Stamp, Any] = ((0, b"", 0, 0), ())
_ZERO: tuple[Stamp, Any] = ((0, b"", 0, 0), 0)


@dataclass(slots=True)
class Item:
    """One bookmark or folder as derived: its fields' winning values and where it sits."""

    id: str
    kind: str = ""
    title: str = ""
    url: str = ""
    tags: tuple[str, ...] = ()
    added: int = 0
    modified: int = 0
    parent: str = ""
    pos: str = ""
    children: list[Item] = field(default_factory=list)

    @property
    def folder(self) -> bool:
        return self.kind == FOLDER


class Registers:
    """The winning write of every field of every item: what a fold of the notes keeps."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, tuple[Stamp, Any]]] = {}
        self.moves: list[tuple[Stamp, str, str, str]] = []  # (stamp, id, parent, key)
        self.deleted: dict[str, Stamp] = {}
        self.written: dict[str, Stamp] = {}  # latest non-delete write of each item
        self.clock = 0
        self.notes = 0

    def add_note(self, note: dict[str, Any]) -> bool:
        """Fold one note (a local API note map); False if it is no valid bookmark note."""
        body = decode(note.get("body"))
        origin, seqno = note.get("origin"), note.get("seqno")
        if body is None or not isinstance(origin, bytes) or type(seqno) is not int:
            return False
        self.add(body["c"], origin, seqno, body["ops"])
        return True

    def add(self, clock: int, origin: bytes, seqno: int, ops: list[Any]) -> None:
        self.notes += 1
        if clock > self.clock:
            self.clock = clock
        fields, written, deleted = self.fields, self.written, self.deleted
        for k, op in enumerate(ops):
            if not isinstance(op, dict):
                continue
            iid = op.get("i")
            if not isinstance(iid, str) or not iid or iid in ROOTS or len(iid) > 64:
                continue
            stamp = (clock, origin, seqno, k)
            if op.get("d") is True:
                if iid not in deleted or deleted[iid] < stamp:
                    deleted[iid] = stamp
                continue
            wrote = False
            regs = fields.get(iid)
            if regs is None:
                regs = fields[iid] = {}
            for name, value in op.items():
                if name in _FIELDS:
                    value = _check(name, value)
                    if value is None:
                        continue
                    wrote = True
                    old = regs.get(name)
                    if old is None or old[0] < stamp:
                        regs[name] = (stamp, value)
                elif (name == "p" and type(value) is list and len(value) == 2
                        and type(value[0]) is str and value[0] != iid
                        and position.valid(value[1])):
                    wrote = True
                    self.moves.append((stamp, iid, value[0], value[1]))
            if wrote and (iid not in written or written[iid] < stamp):
                written[iid] = stamp

    def tree(self) -> Tree:
        return Tree.derive(self)


def _check(name: str, value: Any) -> Any:
    """The field's value if it is well formed, else None (a bad write is no write)."""
    if name == "k":
        return value if value in (FOLDER, BOOKMARK) else None
    if name in ("t", "u"):
        return value if isinstance(value, str) and len(value) <= MAX_TEXT else None
    if name == "g":
        ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        return tuple(value) if ok else None
    return value if type(value) is int and 0 <= value < 1 << 62 else None


def decode(body: object) -> dict[str, Any] | None:
    from ..notes import decode as app_decode

    note = app_decode(body, APP)
    if note is None or type(note.get("c")) is not int or not isinstance(note.get("ops"), list):
        return None
    if not 0 <= note["c"] < 1 << 62:
        return None
    return note


def encode(clock: int, ops: list[Op]) -> bytes:
    from ..notes import encode as app_encode

    return app_encode(APP, c=clock, ops=ops)


def chunks(clock: int, ops: list[Op], budget: int = 128 * 1024) -> list[tuple[int, list[Op]]]:
    """`ops` cut into notes of at most about `budget` bytes, with their clocks from `clock`
    on (well under the largest note body a member takes)."""
    out: list[tuple[int, list[Op]]] = []
    chunk: list[Op] = []
    size = 0
    for op in ops:
        cost = 32 + sum((len(v) if v.isascii() else len(v.encode())) if isinstance(v, str)
                        else 16 for v in op.values())
        if chunk and size + cost > budget:
            out.append((clock + len(out), chunk))
            chunk, size = [], 0
        chunk.append(op)
        size += cost
    if chunk:
        out.append((clock + len(out), chunk))
    return out


class Tree:
    """The derived tree: the live items, each folder's children in order."""

    def __init__(self, items: dict[str, Item], dead: set[str], clock: int) -> None:
        self.items = items  # live items and the roots
        self.dead = dead  # tombstones
        self.clock = clock

    @property
    def roots(self) -> list[Item]:
        return [self.items[r] for r in ROOTS]

    @classmethod
    def derive(cls, regs: Registers) -> Tree:
        items: dict[str, Item] = {r: Item(r, FOLDER, ROOT_TITLES[r]) for r in ROOTS}
        every: dict[str, Item] = {}
        for iid, f in regs.fields.items():
            kind = f.get("k")
            if kind is None:
                continue  # only edits held so far: its creation is on the way
            get = f.get
            t, u, g, a, m = get("t", _NONE), get("u", _NONE), get("g", _NONE_TAGS), \
                get("a", _ZERO), get("m", _ZERO)
            every[iid] = Item(iid, kind[1], t[1], u[1], g[1], a[1], m[1], "", "", [])
        every.update(items)
        parent: dict[str, str] = {}
        where: dict[str, str] = {}
        for _, iid, to, key in sorted(regs.moves):
            mover = every.get(iid)
            if mover is None or iid in ROOTS:
                continue
            dest = every.get(to)
            if dest is not None and not dest.folder:
                continue
            if mover.folder and _reaches(parent, to, iid):
                continue  # would put a folder inside itself
            parent[iid] = to
            where[iid] = key
        deleted, written = regs.deleted, regs.written
        dead = {i for i, s in deleted.items() if i not in written or written[i] < s}
        for iid, it in every.items():
            if iid in ROOTS or iid in dead:
                continue
            up = parent.get(iid)
            seen = 0
            # up through tombstones to the nearest live folder; unknown: under `other`
            while up is not None and up not in ROOTS and (up in dead or up not in every):
                if up not in every:
                    up = None
                    break
                up = parent.get(up)
                seen += 1
                if seen > len(every):
                    up = None
                    break
            it.parent = up if up is not None else "other"
            it.pos = where.get(iid, "")
            items[iid] = it
        for iid, it in items.items():
            if iid not in ROOTS:
                items[it.parent].children.append(it)
        for it in items.values():
            if len(it.children) > 1:
                it.children.sort(key=lambda c: (c.pos, c.id))
        return cls(items, dead, regs.clock)

    def walk(self, top: Item | None = None) -> Iterator[tuple[int, Item]]:
        """(depth, item) for every item under `top` (every root: None), in tree order."""
        stack = [(0, r) for r in reversed([top] if top else self.roots)]
        while stack:
            depth, it = stack.pop()
            yield depth, it
            stack.extend((depth + 1, c) for c in reversed(it.children))

    def path(self, it: Item) -> list[str]:
        """The titles from the root's id down to `it`'s folder."""
        out: list[str] = []
        up = it.parent
        while up and up not in ROOTS:
            p = self.items[up]
            out.append(p.title)
            up = p.parent
        out.append(up or it.id)
        return list(reversed(out))


def _reaches(parent: dict[str, str], start: str, target: str) -> bool:
    """Whether `target` is `start` or one of its ancestors under the moves applied so far."""
    up: str | None = start
    steps = 0
    while up is not None:
        if up == target:
            return True
        up = parent.get(up)
        steps += 1
        if steps > len(parent) + 1:
            return True  # cannot happen (moves never close a cycle); refuse rather than loop
    return False


def fold(notes: Iterable[dict[str, Any]]) -> Registers:
    regs = Registers()
    for n in notes:
        regs.add_note(n)
    return regs
