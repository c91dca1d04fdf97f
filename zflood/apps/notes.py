"""App notes: a note whose body is a CBOR map with a text key `app` and the app's own fields.

Any other body stays opaque. `decode` never raises: a note that is not an app note, or not of
the app asked for, is None, so an app reading the shared log skips what it does not own.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ..appnote import MAX_APP, fields

AppNote = dict[str, Any]

#: Reserved for the system's own notes (member names); apps pick another name.
SYSTEM = "zflood"


def encode(app: str, **fields: Any) -> bytes:
    if not app or not isinstance(app, str) or len(app.encode()) > MAX_APP:
        raise ValueError(f"an app name is non-empty text of at most {MAX_APP} bytes")
    return cbor2.dumps({"app": app, **fields}, canonical=True)


def decode(body: object, app: str | None = None) -> AppNote | None:
    """The fields of an app note (of `app`, when given), or None."""
    value = fields(body)  # the one check of app notes: the store's index and PUB use it too
    if value is None or (app is not None and value["app"] != app):
        return None
    return value
