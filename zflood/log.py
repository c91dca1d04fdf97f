"""Chain logic: each origin's log as a hash chain, checked link by link; forks and their
resolution. No I/O, no clock.

Theory of operation. An origin's notes form a hash chain: a note's id covers its origin,
seqno, body and the previous note's id (`identity.note_id`), and the origin signs ids, so one
signature on the last note of a run vouches for every note behind it. `Log` sits between the
engine (`node.Node`, which speaks the protocol) and the store: it computes ids, checks that a
received run is signed by its origin, and decides forks. The store is the one owner of each
origin's count and head (the last id); `Log` reads them from it and nothing keeps a copy.

Forks. Two validly signed different notes at one (origin, seqno) mean the origin wrote two
chains: a restored backup, or a lost WAL, that published again before catching up. Every
member applies one rule, which needs nothing but the two notes where the branches split:

    **the branch whose note at the split has the smaller id (as bytes) is kept.**

It depends on no order of arrival and no clock, and it never changes its mind: the notes at
a split are fixed once signed, so a branch that lost at a seqno loses there for good (a later
third branch can only win at its own, earlier or later, split). A length-based rule would flip
as branches grow and cannot be decided until both are known in full. Ids are hashes, so
neither the backup nor the live copy is favoured, and that is why the losing side's bodies
must not be lost: its origin publishes them again.

A member holding the losing branch replaces it from the split (`Store.replace`): the notes it
drops leave the chain but stay in the store (`dropped`), as evidence, and, where they were
delivered here, at the local index they were delivered at, so replay and readers resuming
from an index still see each of them once, where they saw it. A member that receives the
losing branch keeps it the same way, without an index. Each side sends the other its branch
from the split, so a peer learns the outcome at once.

Healing. The origin applies the rule to its own log like anyone. Every note of its own that
is off the kept chain (its own dropped notes, or notes of its own on a losing branch that a
peer hands back to it: a member linked to an origin sends it the notes of that origin it
dropped, until the chain carries them) is published again, once it has caught up with what
its peers hold of it, as a new note at the head of the kept chain. Such a note's body is
`again(root seqno, root id, body)`: a CBOR tag (AGAIN_TAG) wrapping the original note's
coordinates and body, so a member can tell which written note it carries (a note published
again after another fork still names the first). Exactly once: a member delivers a note
published again only if it never delivered a note carrying the same root, on the chain or
before the chain dropped it; otherwise the note is kept on the chain (logs stay identical)
but hidden from delivery and replay. So each body written is delivered once on every member,
whichever branch it first saw; a new member delivers the kept chain, bodies published again
included. Local `publish` refuses bytes bodies that begin like such a note (AGAIN_PREFIX).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import cbor2

from . import wire
from .errors import RemoteProtocolError, StoreDamaged
from .identity import GENESIS, ID_SIZE, note_id, verify
from .store import Again, Body, Dropped, Fork, Row, Store

#: The CBOR tag of a body published again ("zfld"), and how such a body begins.
AGAIN_TAG = 0x7A666C64
AGAIN_PREFIX = b"\xda" + AGAIN_TAG.to_bytes(4, "big")

#: seqno -> the body a note publishing another's again delivers (None: hidden here)
Shown = dict[int, Body | None]


def again(root_seqno: int, root: bytes, body: Body) -> bytes:
    """The body of a note that publishes the body of note `root` again."""
    return cbor2.dumps(cbor2.CBORTag(AGAIN_TAG, [root_seqno, root, body]))


def carried(seqno: int, nid: bytes, body: Body) -> tuple[bytes, int, Body] | None:
    """(root id, root seqno, body) if this note publishes another's body again, else None.
    A body that begins like one and is not well formed stays an opaque body."""
    if type(body) is not bytes or not body.startswith(AGAIN_PREFIX):
        return None
    try:
        tag = cbor2.loads(body)
        root_seqno, root, inner = tag.value
    except Exception:
        return None
    if (
        not isinstance(tag, cbor2.CBORTag)
        or type(root_seqno) is not int
        or not 0 <= root_seqno < seqno
        or type(root) is not bytes
        or len(root) != ID_SIZE
        or not isinstance(inner, str | bytes)
    ):
        return None
    return root, root_seqno, inner


def kept(a: bytes, b: bytes) -> bytes:
    """The rule: of two notes at the seqno where two branches split, the one kept."""
    return min(a, b)


class Log:
    """Every origin's chain, over a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.forked: set[bytes] = {fork.origin for fork in store.forks()}

    # -- counts and heads: read from the store, never copied -------------------------------
    def count(self, origin: bytes) -> int:
        return self.store.count(origin)

    def head(self, origin: bytes) -> bytes:
        """The id of `origin`'s last held note; GENESIS when none is held."""
        head = self.store.head(origin)
        return GENESIS if head is None else head

    def counts(self) -> dict[bytes, int]:
        return self.store.counts()

    def tips(self) -> dict[bytes, bytes]:
        return self.store.tips()

    def id_at(self, origin: bytes, seqno: int) -> bytes:
        """The id of held note `seqno` of `origin` (GENESIS before the first)."""
        if seqno < 0:
            return GENESIS
        if seqno == self.store.count(origin) - 1:
            return self.head(origin)
        found = self.store.id_at(origin, seqno)
        if found is None:  # our own file lost it: never a peer's fault
            raise StoreDamaged(f"note {seqno} of {origin[:4].hex()} is missing from the store")
        return found

    # -- checks ----------------------------------------------------------------------------
    @staticmethod
    def ids(origin: bytes, start: int, prev: bytes, bodies: Sequence[Body]) -> list[bytes]:
        """The ids of notes start.. of `origin` that follow `prev`."""
        ids = []
        nid = prev
        for i, body in enumerate(bodies):
            nid = note_id(origin, start + i, nid, body)
            ids.append(nid)
        return ids

    def check(
        self, origin: bytes, start: int, prev: bytes, bodies: Sequence[Body], sig: bytes
    ) -> list[bytes]:
        """The ids of a received run, which must be signed by its origin; else the peer
        broke the protocol (RemoteProtocolError)."""
        if start == 0 and prev != GENESIS:
            raise RemoteProtocolError("a log's first note must follow the genesis id")
        ids = self.ids(origin, start, prev, bodies)
        if not verify(origin, sig, ids[-1]):
            end = start + len(bodies)
            raise RemoteProtocolError(f"bad signature on {origin[:4].hex()} notes "
                                      f"{start}..{end - 1}")
        return ids

    # -- writes ----------------------------------------------------------------------------
    def again_rows(self, origin: bytes, start: int, rows: Sequence[Row]) -> list[Again]:
        """For the rows (from seqno `start`) that publish a body again: what the store keeps
        of them, hidden where that body was delivered here already."""
        out: list[Again] = []
        shown: set[bytes] = set()
        for i, (nid, _, body) in enumerate(rows):
            found = carried(start + i, nid, body)
            if found is None:
                continue
            root, root_seqno, inner = found
            hidden = root in shown or self.store.delivered(origin, root, root_seqno)
            if not hidden:
                shown.add(root)
            out.append((start + i, root, root_seqno, hidden, inner))
        return out

    def append(self, origin: bytes, start: int, rows: Sequence[Row]) -> tuple[int, Shown]:
        """Store notes start.. of `origin`; returns the first one's local index and, for
        those that publish a body again, the body to deliver (None: delivered already)."""
        extra = self.again_rows(origin, start, rows)
        first = self.store.append(origin, start, rows, extra)
        return first, {a[0]: None if a[3] else a[4] for a in extra}

    def replace(self, origin: bytes, start: int, rows: Sequence[Row]) -> tuple[int, Shown]:
        """Put the winning branch's `rows` in place of ours from seqno `start` (ours are
        dropped); as `append`. What is hidden is decided before ours leave the chain, so a
        body delivered here on our branch is not delivered again."""
        extra = self.again_rows(origin, start, rows)
        first = self.store.replace(origin, start, rows, extra)
        return first, {a[0]: None if a[3] else a[4] for a in extra}

    def keep_lost(
        self, origin: bytes, start: int, ids: Sequence[bytes], bodies: Sequence[Body], sig: bytes
    ) -> int:
        """Keep a losing branch's signed run (from seqno `start`) off the chain; how many of
        its notes were new here."""
        notes: list[Dropped] = []
        for i, (nid, body) in enumerate(zip(ids, bodies, strict=True)):
            seqno = start + i
            root, root_seqno, shown = carried(seqno, nid, body) or (nid, seqno, body)
            notes.append((seqno, nid, sig if i == len(ids) - 1 else None, body, root,
                          root_seqno, shown))
        return self.store.keep(origin, notes)

    def add_fork(
        self, origin: bytes, seqno: int, ours: bytes, theirs: bytes,
        start: int, prev: bytes, bodies: Sequence[Body], sig: bytes,
    ) -> bool:
        """Record that `origin` signed two chains splitting at `seqno` (`ours` and `theirs`
        the notes there), with the signed run that vouches for theirs; True if new."""
        evidence = cbor2.dumps({"start": start, "prev": prev, "bodies": list(bodies), "sig": sig})
        win = kept(ours, theirs)
        lose = theirs if win == ours else ours
        self.forked.add(origin)
        return self.store.add_fork(Fork(origin, seqno, win, lose, evidence))

    # -- handing back ----------------------------------------------------------------------
    def owed(self, origin: bytes) -> list[Dropped]:
        """Notes of `origin` off the chain whose bodies the chain does not carry yet."""
        return self.store.owed(origin) if origin in self.forked else []

    def is_owed(self, origin: bytes) -> bool:
        return origin in self.forked and bool(self.store.owed(origin, limit=1))

    def runs(self, origin: bytes, notes: Iterable[Dropped]) -> Iterator[wire.Notes]:
        """Notes off the chain (in seqno order) as signed runs that a peer can check, made as
        they are consumed: each follows a note of the chain or of an earlier run and ends at
        a stored signature (the rest, unsigned, cannot be sent)."""
        have = self.count(origin)
        open_runs: dict[bytes, tuple[int, bytes, list[Body]]] = {}  # id to follow -> run
        for seqno, nid, sig, body, *_ in notes:
            run = None
            for after, (start, _, bodies) in list(open_runs.items()):
                if start + len(bodies) == seqno and note_id(origin, seqno, after, body) == nid:
                    run = open_runs.pop(after)
                    break
            if run is None:
                chain = self.id_at(origin, seqno - 1) if seqno <= have else None
                if chain is not None and note_id(origin, seqno, chain, body) == nid:
                    after = chain
                else:  # after a note off the chain here (its body published again since)
                    off = next((a for a in self.store.off_chain_ids(origin, seqno - 1)
                                if note_id(origin, seqno, a, body) == nid), None)
                    if off is None:
                        continue  # it follows nothing we hold: it cannot be checked
                    after = off
                run = (seqno, after, [])
            start, prev, bodies = run
            bodies.append(body)
            if sig is not None:
                yield wire.Notes(origin, start, prev, tuple(bodies), sig)
                open_runs[nid] = (seqno + 1, nid, [])
            else:
                open_runs[nid] = (start, prev, bodies)
