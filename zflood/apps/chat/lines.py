"""Chat lines as notes, and as text on a terminal.

    {app: "chat", room: "general", text: "...", time: author's clock (seconds)}

A line is shown in arrival order (which differs from member to member, and that is fine for a
chat) with the author's local time beside it, for display only. Names come from the group's
member notes (see `zflood members`); a member without one shows as its short id.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from .. import notes

APP = "chat"
DEFAULT_ROOM = "general"
MAX_TEXT = 16 * 1024  # a chat line, not a document; the note limit is far above this

Map = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Line:
    index: int  # local arrival index
    origin: bytes
    room: str
    text: str
    time: float


def note(room: str, text: str, now: float | None = None) -> bytes:
    if not text.strip():
        raise ValueError("an empty line is not sent")
    if len(text.encode()) > MAX_TEXT:
        raise ValueError(f"a chat line is at most {MAX_TEXT // 1024} KiB")
    return notes.encode(APP, room=room, text=text, time=time.time() if now is None else now)


def line(n: Map) -> Line | None:
    """The chat line a note map (from the local API) holds, or None."""
    body = notes.decode(n.get("body"), APP)
    if body is None:
        return None
    room, text, when = body.get("room"), body.get("text"), body.get("time")
    if not isinstance(room, str) or not isinstance(text, str):
        return None
    return Line(int(n["index"]), n["origin"], room, text,
                float(when) if isinstance(when, int | float) else 0.0)


def printable(text: str) -> str:
    """One terminal line: newlines and other control characters escaped, so a line can
    neither break the layout nor send escape sequences to the reader's terminal."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("    ")
        elif unicodedata.category(ch) in ("Cc", "Cf") and ch != "\u200d":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def name_of(origin: bytes, names: dict[str, str]) -> str:
    return printable(names.get(origin.hex()) or origin.hex()[:8])


def format_line(ln: Line, names: dict[str, str]) -> str:
    stamp = time.strftime("%H:%M", time.localtime(ln.time)) if ln.time else "--:--"
    return f"{stamp} {name_of(ln.origin, names)}: {printable(ln.text)}"
