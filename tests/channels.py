"""A Channel the test drives by hand: it records what the engine sends and lets the test
play the peer, frame by frame."""

from __future__ import annotations

from collections.abc import Callable

from zflood import Node, wire


class ManualChannel:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self._receive: Callable[[bytes], None] | None = None
        self._on_close: Callable[[], None] | None = None

    # the engine's side
    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.sent.append(frame)

    def on_receive(self, callback: Callable[[bytes], None]) -> None:
        self._receive = callback

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close = callback
        if self.closed:
            callback()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._on_close:
                self._on_close()

    # the test's side
    def feed(self, frame: bytes) -> None:
        assert self._receive is not None
        if not self.closed:
            self._receive(frame)

    def messages(self) -> list[wire.Message]:
        return [wire.decode(f) for f in self.sent]


def linked(a: Node, b: Node) -> tuple[ManualChannel, ManualChannel]:
    """Connect `a` and `b` over two ManualChannels and trade their hellos: (a's end, b's)."""
    ca, cb = ManualChannel(), ManualChannel()
    a.connect(ca)
    b.connect(cb)
    ca.feed(cb.sent[0])
    cb.feed(ca.sent[0])
    return ca, cb
