"""The local API: a PUB socket of delivered notes, a control socket, and `Client` for apps.

`protocol` holds what travels on the sockets (ops, note maps, topics), `server` the
daemon's side (`LocalAPI`), `client` the Python client (`Client`). Apps import from here.
"""

from .client import Client, DaemonUnavailable
from .protocol import TOPIC, Map, ipc_endpoints, note_map, topic
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
