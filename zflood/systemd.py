"""What the daemon says to systemd and takes from it: sd_notify, the watchdog, credentials.

Theory of operation. Under systemd the manager passes everything through the environment:
$NOTIFY_SOCKET (where READY=1, STOPPING=1 and WATCHDOG=1 go, as single datagrams: the
protocol needs no libsystemd), $WATCHDOG_USEC and $WATCHDOG_PID (how often to feed it, and
whether that is this process's job) and $CREDENTIALS_DIRECTORY (the join code, from the unit's
LoadCredential=). Outside systemd none is set and every function here does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from .errors import ConfigurationError
from .identity import Group
from .statedir import load_group, save_group

log = logging.getLogger("zflood.daemon")


def sd_notify(message: str) -> None:
    """The sd_notify protocol without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(path)
        s.sendall(message.encode())


def watchdog_period() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


def join_from_credentials(state: Path) -> None:
    """Under systemd, `LoadCredential=join:/etc/zflood/INSTANCE.join` hands over the code;
    an empty credential means "no code" (the unit's fallback when the file is missing)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return
    try:
        text = Path(creds, "join").read_text().strip()
    except FileNotFoundError:
        text = ""
    current = load_group(state)
    if not text:
        if current is None:
            instance = state.name
            raise ConfigurationError(
                f"no join code: put it in /etc/zflood/{instance}.join (mode 0600), then "
                f"systemctl restart zflood@{instance}"
            )
        return
    group = Group.from_join_code(text)
    if current is None:
        save_group(state, group)
        log.info("joined group %s with the code from the systemd credential", group.id.hex())
    elif current != group:
        raise ConfigurationError(
            f"{state} belongs to group {current.id.hex()}, the join credential to "
            f"{group.id.hex()}: remove one of them"
        )
