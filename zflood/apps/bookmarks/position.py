"""Positions within a folder: keys that sort as text, with room between any two.

A key is a string of base-62 digits (ASCII order: 0-9, A-Z, a-z) that never ends in the
smallest digit, so a key strictly between any two keys always exists and no move needs to
renumber its siblings: concurrent inserts at one place keep both, ordered by (key, id).
Appending increments the first digit that can grow, so a folder filled one add at a time
gains about one character per 61 adds; a bulk insert of n keys costs one shared prefix plus
log61(n) characters each.
"""

from __future__ import annotations

import re

DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE = {c: i for i, c in enumerate(DIGITS)}
BASE = len(DIGITS)


_KEY = re.compile(r"[0-9A-Za-z]{0,1023}[1-9A-Za-z]")


def valid(key: object) -> bool:
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def between(lo: str | None, hi: str | None) -> str:
    """A key strictly after `lo` (None: the start) and before `hi` (None: the end)."""
    a = lo or ""
    if hi is None:
        for i, c in enumerate(a):
            if c != DIGITS[-1]:
                return a[:i] + DIGITS[_VALUE[c] + 1]
    if hi is not None and a >= hi:
        raise ValueError(f"no key between {lo!r} and {hi!r}")
    out: list[str] = []
    b = hi
    i = 0
    while True:
        da = _VALUE[a[i]] if i < len(a) else 0
        db = _VALUE[b[i]] if b is not None and i < len(b) else BASE
        if da == db:
            out.append(DIGITS[da])
            i += 1
            continue
        mid = (da + db) // 2
        if mid > da:
            out.append(DIGITS[mid])
            return "".join(out)
        out.append(DIGITS[da])  # db == da + 1: anything longer than a here is below b
        b = None
        i += 1


def spread(lo: str | None, hi: str | None, n: int) -> list[str]:
    """`n` increasing keys between `lo` and `hi`: one shared key, then a short suffix each."""
    if n <= 0:
        return []
    if n == 1:
        return [between(lo, hi)]
    stem = between(lo, hi)  # differs from hi at its last digit, so stem + anything < hi
    width = 1
    while (BASE - 1) ** width < n:
        width += 1
    keys = []
    for j in range(n):
        digits = []
        for _ in range(width):
            j, r = divmod(j, BASE - 1)
            digits.append(DIGITS[r + 1])  # no zero digit: no suffix ends in one
        keys.append(stem + "".join(reversed(digits)))
    return keys
