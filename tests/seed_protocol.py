"""The seed's own protocol, ported faithfully, as the baseline the efficiency tests beat.

Every node reports `got` (its last seqno) for every origin on connect and to every peer
whenever it accepts a note; a peer that lacks notes sends one `want` per missing seqno; the
answer is one `note`. Messages are CBOR over the same simulated channels as zflood's engine,
so frames and bytes are counted the same way. Test support only: nothing in zflood uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import cbor2

from zflood.store import Note


class SeedNode:
    def __init__(self) -> None:
        self.id = os.urandom(8)
        self.origins: dict[bytes, list[str | bytes]] = {self.id: []}
        self.peers: list[Any] = []
        self.handlers: list[Callable[[Note], None]] = []
        self.bodies_in = 0
        self.count = 0

    def subscribe(self, handler: Callable[[Note], None]) -> None:
        for origin, notes in self.origins.items():
            for seqno, body in enumerate(notes):
                handler(Note(origin, seqno, body, b"", -1))
        self.handlers.append(handler)

    def publish(self, body: str | bytes) -> None:
        self._got_note(self.id, len(self.origins[self.id]), body)

    def connect(self, peer: Any) -> None:
        self.peers.append(peer)
        peer.on_receive(lambda frame: self._handle(peer, cbor2.loads(frame)))
        peer.on_close(lambda: self.peers.remove(peer) if peer in self.peers else None)
        for origin in self.origins:
            self._report(peer, origin)

    def tick(self, now: float) -> None:
        pass  # the seed has no timers

    def _handle(self, peer: Any, message: list[Any]) -> None:
        kind, origin, seqno, *rest = message
        if kind == "got":
            last = len(self.origins.get(origin, [])) - 1
            for s in range(last + 1, seqno + 1):
                self._send(peer, ["want", origin, s])
        elif kind == "want":
            self._send(peer, ["note", origin, seqno, self.origins[origin][seqno]])
        else:
            self.bodies_in += 1
            self._got_note(origin, seqno, rest[0])

    def _got_note(self, origin: bytes, seqno: int, body: str | bytes) -> None:
        notes = self.origins.setdefault(origin, [])
        if seqno != len(notes):
            return
        notes.append(body)
        self.count += 1
        for handler in self.handlers:
            handler(Note(origin, seqno, body, b"", -1))
        for peer in self.peers:
            self._report(peer, origin)

    def _report(self, peer: Any, origin: bytes) -> None:
        self._send(peer, ["got", origin, len(self.origins[origin]) - 1])

    def _send(self, peer: Any, message: list[Any]) -> None:
        peer.send(cbor2.dumps(message))
