"""App notes: a note whose body is a CBOR map with a text key `app` and the app's own fields.

Any other body stays opaque. `decode` never raises: a note that is not an app note, or not of
the app asked for, is None, so an app reading the shared log skips what it does not own.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from ..appnote import MAX_APP

AppNote = dict[str, Any]

#: Reserved for the system's own notes (member names); apps pick another name.
SYSTEM = "zflood"


def encode(app: str, **fields: Any) -> bytes:
    if not app or not isinstance(app, str) or len(app.encode()) > MAX_APP:
        raise ValueError(f"an app name is non-empty text of at most {MAX_APP} bytes")
    return cbor2.dumps({"app": app, **fields}, canonical=True)


def decode(body: object, app: str | None = None) -> AppNote | None:
    """The fields of an app note (of `app`, when given), or None."""
    if not isinstance(body, bytes) or not body or body[0] >> 5 != 5:  # 5: a CBOR map
        return None
    fp = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception:  # any malformed body is just not an app note
        return None
    if fp.tell() != len(body) or not isinstance(value, dict):
        return None
    name = value.get("app")
    if not isinstance(name, str) or (app is not None and name != app):
        return None
    if not name or len(name.encode("utf-8", "replace")) > MAX_APP:
        return None  # what zflood.appnote (the store's index, PUB topics) takes for no app
    return value
