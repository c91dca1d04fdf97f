"""zflood: a small group of machines keeping the same ever-growing set of notes.

`Node` is the protocol engine (no I/O); `zflood.sim` simulates a network of them; the daemon
(`zflood run`) carries them over ZeroMQ on a LAN found by Zeroconf.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .errors import LocalError, NodeClosed, RemoteProtocolError, ZfloodError
    from .local import Client
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

# Imported when first asked for: every `zflood` command and app imports this package, and most
# need neither the engine nor ZeroMQ (a command's start-up time is mostly imports).
_WHERE = {
    "Channel": "node", "Node": "node", "Config": "config", "Fork": "store", "Note": "store",
    "LocalError": "errors", "NodeClosed": "errors", "RemoteProtocolError": "errors",
    "ZfloodError": "errors", "Client": "local",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'zflood' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
