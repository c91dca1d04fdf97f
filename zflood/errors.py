"""One error hierarchy, split the way h11 splits it.

`LocalError` means the caller misused the API (a bad argument, a closed node): it is raised to
the caller. `RemoteProtocolError` means a peer broke the protocol (bad CBOR, a forged note): the
engine catches it, logs the reason and closes that peer's channel; it never reaches the caller.
"""

from __future__ import annotations


class ZfloodError(Exception):
    """Base class of every error zflood raises on purpose."""


class LocalError(ZfloodError, ValueError):
    """The caller asked for something invalid."""


class NodeClosed(LocalError):
    """The node was closed; it takes no more calls."""


class StoreInUse(LocalError):
    """Another process (a running daemon) holds the store open."""


class StoreError(LocalError):
    """Our own store failed: never a peer's fault. The message is one line for a user."""


class StoreFull(StoreError):
    """The disk holding the store is full: nothing was written."""


class NoIdentity(LocalError):
    """The store holds no identity and was asked not to make one."""


class StoreDamaged(StoreError):
    """The store's file is damaged (SQLite says so, or a note fails its hash link)."""


class NoGroup(LocalError):
    """The state directory is in no group yet (`zflood init` or `zflood join` first)."""

    def __init__(self, state: object) -> None:
        super().__init__(f"{state} is in no group yet: run `zflood init` or `zflood join`")


class BadJoinCode(LocalError):
    """A join code that does not parse or whose checksum does not match."""


class ConfigurationError(LocalError):
    """The service cannot start until someone fixes its setup; systemd must not restart it
    (the unit's RestartPreventExitStatus names EX_CONFIG)."""

    exit_status = 78  # EX_CONFIG


class RemoteProtocolError(ZfloodError):
    """A peer sent something invalid; the channel it came on gets closed."""
