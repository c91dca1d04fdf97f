"""zflood: a small group of machines keeping the same ever-growing set of notes.

`Node` is the protocol engine (no I/O); `zflood.sim` simulates a network of them; the daemon
(`zflood run`) carries them over ZeroMQ on a LAN found by Zeroconf.
"""

from typing import Any

from .config import Config
from .errors import LocalError, NodeClosed, RemoteProtocolError, ZfloodError
from .node import Channel, Node
from .store import Fork, Note

__all__ = [
    "Channel",
    "Client",
    "Config",
    "Fork",
    "LocalError",
    "Node",
    "NodeClosed",
    "Note",
    "RemoteProtocolError",
    "ZfloodError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The client needs zmq; the engine alone must not import it.
    if name == "Client":
        from .local import Client

        return Client
    raise AttributeError(f"module 'zflood' has no attribute {name!r}")
