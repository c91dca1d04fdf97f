"""The mail queue as every member sees it: a fold of the group's mail notes.

Members receive notes in different orders, so the fate of a message must not depend on it:
a message is `sent` if any receipt says so, else `failed` if any says so, else `deferred` with
the latest temporary failure (by attempt count, then time), else `queued`. A message is known
once its envelope is held; parts are remembered (as local note indices, so nothing large is
kept) only while no receipt has closed the message. Deliverer notes say who delivers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import notes
from .message import APP

Map = dict[str, Any]


@dataclass
class Message:
    mid: bytes
    origin: bytes | None = None  # the member that submitted it
    envelope: Map | None = None
    index: int = -1  # local index of the envelope: the queue's order
    parts: dict[int, int] = field(default_factory=dict)  # part number -> local note index
    receipts: list[tuple[bytes, Map]] = field(default_factory=list)  # (deliverer, receipt)
    deferred: tuple[bytes, Map] | None = None

    @property
    def complete(self) -> bool:
        return self.envelope is not None and len(self.parts) == self.envelope["parts"]

    @property
    def receipt(self) -> tuple[bytes, Map] | None:
        """The receipt that decides the message's fate, the same on every member."""
        if not self.receipts:
            return None
        return max(self.receipts,
                   key=lambda r: (r[1].get("status") == "sent", -float(r[1].get("time", 0)),
                                  r[0]))

    @property
    def state(self) -> str:
        r = self.receipt
        if r is not None:
            return str(r[1]["status"])
        return "deferred" if self.deferred is not None else "queued"


def _valid_envelope(n: Map) -> bool:
    return (isinstance(n.get("from"), str) and isinstance(n.get("rcpt"), list)
            and all(isinstance(r, str) for r in n["rcpt"]) and type(n.get("parts")) is int
            and type(n.get("size")) is int and isinstance(n.get("sha256"), bytes))


class MailState:
    def __init__(self) -> None:
        self.messages: dict[bytes, Message] = {}
        self.deliverers: dict[bytes, Map] = {}  # origin -> its latest deliverer note
        self.next_index = 0

    def add(self, note: Map) -> Map | None:
        """Take one note (a local API note map); returns its mail fields if it was mail."""
        self.next_index = max(self.next_index, int(note["index"]) + 1)
        n = notes.decode(note["body"], APP)
        if n is None or not isinstance(n.get("k"), str):
            return None
        kind, origin = n["k"], note["origin"]
        if kind == "deliverer":
            if n.get("state") in ("active", "stopped"):
                self.deliverers[origin] = {**n, "index": note["index"]}
            return n
        mid = n.get("mid")
        if not isinstance(mid, bytes) or len(mid) != 16:
            return None
        msg = self.messages.get(mid)
        if msg is None:
            msg = self.messages[mid] = Message(mid)
        if kind == "part" and type(n.get("n")) is int and isinstance(n.get("data"), bytes):
            if msg.receipt is None and (msg.origin in (None, origin)):
                msg.parts[n["n"]] = note["index"]
        elif kind == "msg" and msg.envelope is None and _valid_envelope(n):
            msg.origin, msg.envelope, msg.index = origin, n, note["index"]
            msg.parts = {k: v for k, v in msg.parts.items() if k < n["parts"]}
        elif kind == "receipt" and n.get("status") in ("sent", "failed"):
            msg.receipts.append((origin, n))
            msg.parts.clear()
        elif kind == "deferred" and type(n.get("attempts")) is int:
            old = msg.deferred
            if old is None or (n["attempts"], n.get("time", 0)) > (
                    old[1]["attempts"], old[1].get("time", 0)):
                msg.deferred = (origin, n)
        return n

    def queue(self) -> list[Message]:
        """Messages with an envelope, in the order their envelopes arrived here."""
        return sorted((m for m in self.messages.values() if m.envelope is not None),
                      key=lambda m: m.index)

    def pending(self) -> list[Message]:
        """Messages still to be sent: complete, with no receipt."""
        return [m for m in self.queue() if m.receipt is None and m.complete]

    def active_deliverers(self, now: float, lease: float) -> dict[bytes, Map]:
        """Deliverers whose latest note says active and is younger than `lease` (by their
        clock against ours: a LAN's clocks agree to well within a lease of hours)."""
        return {o: n for o, n in self.deliverers.items()
                if n["state"] == "active" and now - float(n.get("time", 0)) < lease}
