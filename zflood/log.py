"""Chain logic: each origin's log as a hash chain, checked link by link. No I/O, no clock.

Theory of operation. An origin's notes form a hash chain: a note's id covers its origin,
seqno, body and the previous note's id (`identity.note_id`), and the origin signs ids, so one
signature on the last note of a run vouches for every note behind it. `Log` sits between the
engine (`node.Node`, which speaks the protocol) and the store: it computes ids, checks that a
received run links to what is held and is signed by its origin, and records forks. The store
is the one owner of each origin's count and head (the last id); `Log` reads them from it and
nothing else keeps a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

from .errors import RemoteProtocolError
from .identity import GENESIS, note_id, verify
from .store import Body, Fork, Row, Store


class Log:
    """Every origin's chain, over a store."""

    def __init__(self, store: Store) -> None:
        self.store = store

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
        assert found is not None
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
    def append(self, origin: bytes, start: int, rows: Sequence[Row]) -> int:
        """Store notes start.. of `origin`; returns the first one's local index."""
        return self.store.append(origin, start, rows)

    def add_fork(
        self, origin: bytes, seqno: int, ours: bytes, theirs: bytes,
        start: int, prev: bytes, bodies: Sequence[Body], sig: bytes,
    ) -> bool:
        """Record proof that `origin` signed two chains differing at `seqno` (the signed run
        that vouches for theirs); True if it is new."""
        evidence = cbor2.dumps({"start": start, "prev": prev, "bodies": list(bodies), "sig": sig})
        return self.store.add_fork(Fork(origin, seqno, ours, theirs, evidence))
