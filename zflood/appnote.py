"""Which app a note belongs to: the text `app` key of a CBOR map body, or none.

An app note's body is a CBOR map with a text key `app` (DESIGN.md, "Apps"); any other body is
opaque. The store indexes app notes by this name (so an app reads its own notes at a cost that
follows their number, not the log's) and the local API sends them on PUB under `note/<app>`.
Bodies come from any member, so this never raises and looks no further than it must: only a
bytes body whose first byte is a CBOR map is decoded. A name longer than `MAX_APP` bytes, or
empty, is no app name, so a peer cannot make index keys or topics of any size.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

#: Longest app name, in UTF-8 bytes.
MAX_APP = 64

_MAP_FIRST, _MAP_LAST = 0xA0, 0xBF  # CBOR major type 5 (a map), every length encoding


def fields(body: object) -> dict[Any, Any] | None:
    """The map of an app note, `app` checked as `app_of` says; None for an opaque note."""
    if not isinstance(body, bytes) or not body or not _MAP_FIRST <= body[0] <= _MAP_LAST:
        return None
    fp = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception:  # any malformed body is just not an app note
        return None
    if fp.tell() != len(body) or not isinstance(value, dict):
        return None
    name = value.get("app")
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "replace")) > MAX_APP:
        return None
    return value


def app_of(body: object) -> str | None:
    """The app a note body belongs to, or None for an opaque note."""
    value = fields(body)
    return None if value is None else str(value["app"])
