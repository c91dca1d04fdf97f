"""The local API: a PUB socket of delivered notes, a control socket, and `Client` for apps.

`protocol` holds what travels on the sockets (ops, note maps, topics, limits), `server` the
daemon's side (`LocalAPI`), `client` the Python client (`Client`). Apps import from here.
"""

from .client import Client, DaemonUnavailable
from .protocol import (
    BURST,
    MAX_AHEAD,
    PUB_SNDHWM,
    READ_LIMIT,
    RESYNC,
    SUB_RCVHWM,
    TOPIC,
    Map,
    ipc_endpoints,
    note_map,
)
from .server import LocalAPI

__all__ = [
    "BURST",
    "MAX_AHEAD",
    "PUB_SNDHWM",
    "READ_LIMIT",
    "RESYNC",
    "SUB_RCVHWM",
    "TOPIC",
    "Client",
    "DaemonUnavailable",
    "LocalAPI",
    "Map",
    "ipc_endpoints",
    "note_map",
]
