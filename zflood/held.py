"""Bytes that ZeroMQ still holds for each receiver, learnt from send trackers.

ZeroMQ bounds a socket's queue in messages, not bytes: 10,000 queued messages of 256 KiB are
2.5 GB. A message sent with `copy=False, track=True` comes back with a tracker that turns done
once ZeroMQ lets the message go (handed to the kernel, or dropped with its connection);
`Held` keeps those trackers per receiver, so a sender can stop feeding one that does not
read. Messages smaller than the socket's `copy_threshold` are copied and not tracked: they are
bounded by its SNDHWM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import zmq

__all__ = ["Held"]

K = TypeVar("K", bound=Hashable)


class Held(Generic[K]):
    """Tracked bytes per receiver; looking (`held`, `total`) lets go of what ZeroMQ freed."""

    def __init__(self) -> None:
        self._queues: dict[K, deque[tuple[zmq.MessageTracker, int]]] = {}
        self._bytes: dict[K, int] = {}
        self._sum = 0

    def add(self, key: K, tracker: zmq.MessageTracker | None, size: int) -> None:
        """`size` bytes went to `key` under `tracker` (None or done: nothing is held)."""
        if tracker is None or tracker.done:
            return
        self._queues.setdefault(key, deque()).append((tracker, size))
        self._bytes[key] = self._bytes.get(key, 0) + size
        self._sum += size

    def held(self, key: K) -> int:
        """Bytes sent to `key` that ZeroMQ has not let go yet."""
        queue = self._queues.get(key)
        if queue is None:
            return 0
        freed = 0
        while queue and queue[0][0].done:  # one connection's messages go out in order
            freed += queue.popleft()[1]
        left = self._bytes[key] - freed
        self._sum -= freed
        if queue:
            self._bytes[key] = left
        else:
            del self._queues[key], self._bytes[key]
        return left

    def forget(self, key: K) -> None:
        """Stop counting `key` (its socket is closed: ZeroMQ drops what it held)."""
        self._queues.pop(key, None)
        self._sum -= self._bytes.pop(key, 0)

    def total(self) -> int:
        """Bytes held for every receiver together."""
        for key in list(self._queues):
            self.held(key)
        return self._sum

    @property
    def last_sum(self) -> int:
        """The total as last looked at: what `total` would say, or more."""
        return self._sum

    def __len__(self) -> int:
        """Receivers with bytes held."""
        return len(self._queues)
