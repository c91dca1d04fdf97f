"""Are we in sync? What each side of a link lacks, and how a long sync is getting on.

Theory of operation. The engine knows every peer's heads (what it announced, plus what we sent
it), so what a peer lacks that we hold, and what we lack that it holds, are sums over origins
of the difference of two counts: O(origins), never O(history). What this node still lacks is,
per origin, the most any peer holds beyond our count. `Progress` keeps a short history of
(time, notes held) samples, taken by the daemon's timer, from which it gives the rate at which
notes arrive and the time left at that rate. No clock is read here: `now` is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def gaps(ours: Mapping[bytes, int], theirs: Mapping[bytes, int]) -> tuple[int, int]:
    """(notes we hold that it lacks, notes it holds that we lack)."""
    they_lack = sum(n - theirs.get(o, 0) for o, n in ours.items() if n > theirs.get(o, 0))
    we_lack = sum(n - ours.get(o, 0) for o, n in theirs.items() if n > ours.get(o, 0))
    return they_lack, we_lack


def lacking(ours: Mapping[bytes, int], peers: Iterable[Mapping[bytes, int]]) -> int:
    """Notes some peer holds that we do not."""
    most: dict[bytes, int] = {}
    for heads in peers:
        for origin, n in heads.items():
            if n > ours.get(origin, 0) and n > most.get(origin, 0):
                most[origin] = n
    return sum(n - ours.get(o, 0) for o, n in most.items())


@dataclass(frozen=True)
class Report:
    held: int
    lacking: int
    rate: float | None  # notes arriving per second, over the recent window
    eta: float | None  # seconds left at that rate; None when in sync or nothing arrives

    def as_dict(self) -> dict[str, float | int | None]:
        return {"held": self.held, "lacking": self.lacking, "rate": self.rate, "eta": self.eta}

    def line(self) -> str:
        """One line for a log or `status`."""
        if not self.lacking:
            return f"in sync with the linked peers ({self.held:,} notes held)"
        text = f"catching up: {self.lacking:,} notes to go, {self.held:,} held"
        if self.rate:
            text += f", {self.rate:,.0f} notes/s"
        if self.eta is not None:
            text += f", about {duration(self.eta)} left"
        return text


class Progress:
    """Samples of the notes held over the last `window` seconds."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, held: int) -> None:
        samples = self._samples
        samples.append((now, held))
        while len(samples) > 2 and samples[1][0] <= now - self._window:
            samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def report(self, held: int, lacking: int) -> Report:
        rate = self.rate()
        eta = lacking / rate if lacking and rate and rate > 0 else None
        return Report(held, lacking, rate, eta)


def counted(n: int, noun: str) -> str:
    """`n` of a regular noun for people: 1 note, 2 notes, 1,024 origins."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def duration(seconds: float) -> str:
    """A span for people: 0.4 s, 12 s, 3 min 05 s, 2 h 07 min, 3 d 4 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
