"""zflood: a small group of machines keeping the same ever-growing set of notes.

`Node` is the protocol engine (no I/O); `zflood.sim` simulates a network of them; the daemon
(`zflood run`) carries them over ZeroMQ on a LAN found by Zeroconf.
"""

from .config import Config
from .errors import LocalError, NodeClosed, RemoteProtocolError, ZfloodError
from .node import Channel, Node
from .store import Fork, Note

__all__ = [
    "Channel",
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
