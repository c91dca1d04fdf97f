"""The local API: a PUB socket of delivered notes, a control socket, and `Client` for apps.

`protocol` holds what travels on the sockets (ops, note maps, topics), `server` the
daemon's side (`LocalAPI`), `client` the Python client (`Client`). Apps import from here.
"""

from typing import TYPE_CHECKING, Any

from .client import Client, DaemonUnavailable
from .protocol import TOPIC, Map, ipc_endpoints, note_map, topic

if TYPE_CHECKING:
    from .server import LocalAPI

__all__ = [
    "TOPIC",
    "Client",
    "DaemonUnavailable",
    "LocalAPI",
    "Map",
    "ipc_endpoints",
    "note_map",
    "topic",
]


def __getattr__(name: str) -> Any:
    # The server pulls in the engine; a client (every app, most commands) needs none of it.
    if name == "LocalAPI":
        from .server import LocalAPI

        return LocalAPI
    raise AttributeError(f"module 'zflood.local' has no attribute {name!r}")
