"""The local API's protocol: what travels on its PUB and control sockets, and its limits.

Theory of operation. The PUB socket sends every delivered note as a two-frame message
[TOPIC, CBOR map] (see `note_map`). The control socket takes one CBOR map per request and
answers one CBOR map echoing the request's "id", so a DEALER client can tell a stale reply
from its own. Ops: "publish" {body}, "status", "read" {start, limit}, and "link" {node, up}.
A reply is {"ok": true, ...} or {"ok": false, "error": "one line"}. An app note (a CBOR map
body with a text "app", see `zflood.appnote`) goes on PUB under the topic "note/<app>", its map
with "app" and "prev" (the index of that app's previous note here, -1 for none) added, and
"read" takes an "app" to return that app's notes alone; its reply may name "missing":
indices it skipped because those notes are damaged here (they come on PUB once repaired).
This module holds those shapes and the decoding that turns anything malformed into one
`LocalError`; it opens no socket, so the server (`server.py`) and the client (`client.py`)
share it, and a program in another language needs nothing but this description.
"""

from __future__ import annotations

import io
import os
from typing import Any

import cbor2

from ..errors import LocalError
from ..store import Note

TOPIC = b"note"
# Limits and timers are in `zflood.config.Config` (local_*).
#: What a reply's framing costs per note beyond its body, when sizing a read reply.
NOTE_OVERHEAD = 128

Map = dict[str, Any]


def note_map(note: Note) -> Map:
    """A note as the CBOR map sent on PUB and in replies."""
    return {
        "origin": note.origin,
        "seqno": note.seqno,
        "body": note.body,
        "index": note.index,
        "id": note.id,
    }


def topic(app: str | None) -> bytes:
    """The PUB topic of a note of `app` (None: an opaque note)."""
    return TOPIC if app is None else TOPIC + b"/" + app.encode()


def ipc_endpoints(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """The default (pub, control) endpoints in a runtime or state directory."""
    d = os.path.abspath(os.fspath(directory))
    return f"ipc://{d}/pub.sock", f"ipc://{d}/control.sock"


def decode(data: bytes) -> Any:
    """One CBOR item and nothing after it; anything else is a `LocalError`."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        raise LocalError("not a CBOR message") from None
    if fp.tell() != len(data):
        raise LocalError("trailing bytes after the CBOR item")
    return item


def one_line(text: str, limit: int = 200) -> str:
    """An error message as one short line (it may quote what a client sent)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def int_field(req: Map, key: str, default: int, least: int) -> int:
    """A request's integer field, at least `least`."""
    value = req.get(key, default)
    if type(value) is not int or value < least:
        raise LocalError(f"{key!r} must be an integer >= {least}")
    return value


def live_note(frames: list[bytes], app: str | None = None) -> Map | None:
    """A note map from a PUB message (of `app` only, when given), or None for anything else.
    Topics match by prefix, so "note/chat" also brings "note/chatter": the topic must be
    `topic(app)` exactly."""
    if len(frames) != 2:
        return None
    if app is None:
        if frames[0] != TOPIC and not frames[0].startswith(TOPIC + b"/"):
            return None
    elif frames[0] != topic(app):
        return None
    try:
        note = decode(frames[1])
    except LocalError:
        return None
    if not isinstance(note, dict) or type(note.get("index")) is not int:
        return None
    if app is not None and type(note.get("prev")) is not int:
        return None
    return note


def node_id(node: bytes | str) -> bytes:
    """A node id given as bytes or hex, checked."""
    try:
        raw = bytes.fromhex(node) if isinstance(node, str) else node
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LocalError(f"a node id is 32 bytes (64 hex digits), not {node!r}")
    return raw
