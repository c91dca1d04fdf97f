"""A logger for faults that repeat: the first of a kind at its level, the rest counted.

A peer that sends garbage (or a stranger who floods us) must not be able to fill the journal:
each (kind, who) fault is logged once at its level, repeats go to debug, and every `period`
seconds one summary line says how many were suppressed. python-zeroconf's QuietLogger is the
model. Kinds are short fixed strings chosen by the caller ("bad HI", "malformed frame"); `who`
is whatever names the source (a short node id, an address). The number of distinct keys held
is bounded, so a flood of new sources cannot grow memory: past `max_keys` they share one key.

No clock is read here: callers pass `now` (the daemon's loop time), as everywhere else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

_OTHERS = "(others)"


@dataclass
class QuietLog:
    logger: logging.Logger
    period: float = 60.0  # a summary of what was suppressed at most this often
    max_keys: int = 1024  # distinct (kind, who) remembered before sources are lumped together
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)  # key -> repeats since summary
    _summary_at: float | None = None

    def fault(self, now: float, kind: str, who: str, message: str, *args: object,
              level: int = logging.WARNING) -> bool:
        """Log `message % args` for fault `kind` from `who`; True if it was logged at `level`
        (the first of its key), False if it only counted."""
        key = (kind, who)
        if key not in self._seen and len(self._seen) >= self.max_keys:
            key = (kind, _OTHERS)
        repeats = self._seen.get(key)
        if self._summary_at is None:
            self._summary_at = now + self.period
        if repeats is None:
            self._seen[key] = 0
            self.logger.log(level, message, *args)
            self.flush(now)
            return True
        self._seen[key] = repeats + 1
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(message, *args)
        self.flush(now)
        return False

    def flush(self, now: float) -> None:
        """Write the summary line if one is due; the daemon calls this from its timer too."""
        if self._summary_at is None or now < self._summary_at:
            return
        self._summary_at = now + self.period
        suppressed = {k: n for k, n in self._seen.items() if n}
        if suppressed:
            total = sum(suppressed.values())
            kinds: dict[str, int] = {}
            for (kind, _), n in suppressed.items():
                kinds[kind] = kinds.get(kind, 0) + n
            detail = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
            self.logger.warning("%d repeated faults in the last %.0fs not logged (%s)",
                                total, self.period, detail)
        # Keys are kept (a source that goes on faulting stays quiet) but their counts restart;
        # keys that stayed quiet for a whole period are forgotten, so memory follows activity.
        self._seen = {k: 0 for k, n in self._seen.items() if n}

    @property
    def keys(self) -> int:
        return len(self._seen)
