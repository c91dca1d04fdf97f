"""What an app holds of its group: the running daemon's local API, or the store itself.

An app must work with the daemon stopped (a laptop offline, the daemon not started yet): its
notes then go straight into the store and leave with the next `zflood run`, exactly like
`zflood publish`. `open_group(state)` returns a `Group` over the daemon's control socket when a
daemon holds the store, else over the store opened directly (which the daemon then cannot open
until the app closes it: apps keep that short).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ..errors import LocalError

Map = dict[str, Any]


class Group(Protocol):
    running: bool

    def publish(self, body: bytes | str) -> Map: ...
    def read(self, start: int = 0, limit: int = 1000, *,
             app: str | None = None) -> tuple[list[Map], int]: ...
    def count(self) -> int: ...
    def names(self) -> dict[str, str]: ...
    def close(self) -> None: ...


class Online:
    running = True

    def __init__(self, control: str, pub: str | None) -> None:
        from ..local import Client

        self.client = Client(control, pub)

    def publish(self, body: bytes | str) -> Map:
        return self.client.publish(body)

    def read(self, start: int = 0, limit: int = 1000, *,
             app: str | None = None) -> tuple[list[Map], int]:
        return self.client.read(start, limit, app=app)

    def count(self) -> int:
        return int(self.client.status()["notes"])

    def names(self) -> dict[str, str]:
        """Member names by origin (hex), as the daemon knows them."""
        return _names(self.client.status())

    def close(self) -> None:
        self.client.close()


class Offline:
    running = False

    def __init__(self, state: Path) -> None:
        from ..cli import _offline_node

        self.node, _ = _offline_node(state)

    def publish(self, body: bytes | str) -> Map:
        from ..local import note_map

        return note_map(self.node.publish(body))

    def read(self, start: int = 0, limit: int = 1000, *,
             app: str | None = None) -> tuple[list[Map], int]:
        from ..local import note_map

        if app is not None:
            found, nxt = self.node.app_notes(app, start, limit)
            return [note_map(n) for n in found], nxt
        notes = [note_map(n) for n in self.node.notes(start, start + limit)]
        return notes, (notes[-1]["index"] + 1 if notes else start)

    def count(self) -> int:
        return self.node.count

    def names(self) -> dict[str, str]:
        """Member names by origin (hex), from the member table in the store."""
        import time

        from ..members import Members

        members = Members.load(self.node, time.time())
        members.save(self.node)  # what it caught up on is not read again next time
        return members.names()

    def close(self) -> None:
        self.node.close()


def _names(status: Map) -> dict[str, str]:
    members = status.get("members")
    if not isinstance(members, list):
        return {}
    return {str(m["origin"]): str(m["name"]) for m in members
            if isinstance(m, dict) and m.get("name") and m.get("origin")}


def open_group(state: Path) -> Online | Offline:
    from ..statedir import running

    ends = running(state)
    if ends:
        return Online(ends["control"][0], ends["pub"][0] if ends.get("pub") else None)
    return Offline(state)


def notes(group: Group, start: int = 0, app: str | None = None) -> Iterator[Map]:
    """Every note (of `app`, if given) from local index `start` on that is held now, in
    index order; with an app the cost follows that app's notes, not the log's."""
    return read_until(group.read, group.count(), start, app)


def read_until(read: Callable[..., tuple[list[Map], int]], end: int, start: int = 0,
               app: str | None = None) -> Iterator[Map]:
    """`notes`, through any `read(start, app=...)` (a Group's, a Client's), up to `end`."""
    while start < end:
        batch, nxt = read(start, app=app)
        yield from batch
        if nxt <= start:
            return
        start = nxt


@contextlib.contextmanager
def opened(state: Path) -> Iterator[Online | Offline]:
    group = open_group(state)
    try:
        yield group
    finally:
        group.close()


__all__ = ["Group", "LocalError", "Offline", "Online", "notes", "open_group", "opened",
           "read_until", "stop_on_signals"]


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set: a long-running app command (a deliverer, a sync
    that watches a file) checks it between steps and stops cleanly."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping

