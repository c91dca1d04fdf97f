"""Reading a room: its last lines without reading the whole log, then new ones as they come.

`last(group, room, n)` reads backwards from the end of the log in windows that double, so
opening a chat of a million lines costs the window that holds its last `n` lines, not the
history; memory holds `n` lines whatever the size. Reads ask for chat notes only (the store's
app index), so other apps' notes in between cost nothing.
"""

from __future__ import annotations

from collections import deque

from ..group import Group
from .lines import APP, Line, line


def between(group: Group, room: str | None, start: int, stop: int) -> list[Line]:
    """The chat lines (of `room`, or all) with local index in [start, stop)."""
    found: list[Line] = []
    while start < stop:
        batch, nxt = group.read(start, min(1000, stop - start), app=APP)
        if nxt <= start:
            break
        for n in batch:
            if n["index"] >= stop:
                return found
            ln = line(n)
            if ln is not None and (room is None or ln.room == room):
                found.append(ln)
        start = nxt
    return found


def last(group: Group, room: str | None, n: int, end: int | None = None) -> list[Line]:
    """The last `n` chat lines of `room` (all rooms: None) before index `end`."""
    hi = group.count() if end is None else end
    window = max(64, 4 * n)
    kept: deque[Line] = deque(maxlen=n)
    while hi > 0 and len(kept) < n and n > 0:
        lo = max(0, hi - window)
        earlier = between(group, room, lo, hi)
        kept.extendleft(reversed(earlier[-(n - len(kept)):]))
        hi, window = lo, window * 2
    return list(kept)
