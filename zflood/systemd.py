"""What zflood says to systemd and takes from it: sd_notify, the watchdog, credentials, and
log lines at their journal priority.

Theory of operation. Under systemd the manager passes everything through the environment:
$NOTIFY_SOCKET (where READY=1, STOPPING=1 and WATCHDOG=1 go, as single datagrams: the
protocol needs no libsystemd), $WATCHDOG_USEC and $WATCHDOG_PID (how often to feed it, and
whether that is this process's job), $CREDENTIALS_DIRECTORY (the join code, from the unit's
LoadCredential=), $JOURNAL_STREAM (stderr is a stream into the journal: a line that starts
with "<N>" is stored at syslog priority N, anything else at info) and $INVOCATION_ID (set for
every service: a configuration error then exits 78, EX_CONFIG, which the unit does not
restart). Outside systemd none is set and every function here does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from .errors import BadJoinCode, ConfigurationError

EX_CONFIG = ConfigurationError.exit_status

#: syslog priorities, as sd-daemon(3)'s SD_ERR and friends
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))

log = logging.getLogger("zflood.systemd")


def sd_notify(message: str) -> None:
    """The sd_notify protocol without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    import socket  # every command asks whether it runs under systemd; only the daemon sends
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


def under_systemd() -> bool:
    """Whether this process is a systemd service (or runs in one)."""
    return bool(os.environ.get("INVOCATION_ID"))


def to_journal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (stderr) is the journal stream systemd connected, by its device and
    inode as $JOURNAL_STREAM gives them (a redirected stderr is not the journal)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def priority(level: int) -> int:
    """The syslog priority of a logging level (debug: 7)."""
    return next((prio for floor, prio in _PRIORITIES if level >= floor), 7)


class JournalFormatter(logging.Formatter):
    """Lines for the journal: "<N>" first, so journald stores each at its priority (an
    error as an error, not as info); no time stamp, journald adds its own."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        # journald cuts a stream at newlines: each line of a traceback keeps the priority
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def error_line(message: str) -> str:
    """A one-line error for stderr: at error priority when stderr is the journal."""
    return ("<3>" if to_journal() else "") + message


def join_from_credentials(state: Path) -> None:
    """Under systemd, `LoadCredential=join:/etc/zflood/INSTANCE.join` hands over the code;
    an empty credential means "no code" (the unit's fallback when the file is missing)."""
    from .statedir import load_group, open_node, save_group

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
    from .identity import Group

    try:
        group = Group.from_join_code(text)
    except BadJoinCode as e:
        raise ConfigurationError(
            f"bad join code in the credential (/etc/zflood/{state.name}.join): {e}"
        ) from None
    if current is None:
        # as `zflood join` does: the store (a new identity) first, then group.key, so that a
        # group.key beside no store always means a store that was lost
        open_node(state, group, create=True).close()
        save_group(state, group)
        log.info("joined group %s with the code from the systemd credential", group.id.hex())
    elif current != group:
        raise ConfigurationError(
            f"{state} belongs to group {current.id.hex()}, the join credential to "
            f"{group.id.hex()}: remove one of them"
        )
