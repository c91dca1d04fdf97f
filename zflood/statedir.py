"""The state directory: where a member keeps its group, its store and its sockets' addresses.

Theory of operation. One directory per group on a machine: `group.key` (the group secret from
`init` or `join`, mode 0600), `node.db` (the store, with the node's own Ed25519 key) and, while
a daemon runs, `endpoints.json` (its pid and where its control and PUB sockets are, so the CLI
and the apps find them). The directory is `--state`, else $ZFLOOD_STATE, else
$STATE_DIRECTORY (under systemd), else the user's data directory. This module imports no
daemon, zmq or asyncio: the CLI and the apps use it without starting anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT, Config
from .errors import LocalError
from .identity import Group

if TYPE_CHECKING:
    from .node import Node

STORE = "node.db"
GROUP = "group.key"
ENDPOINTS = "endpoints.json"
DEFAULT_PORT = 4077


def default_state_dir() -> Path:
    """--state, else $ZFLOOD_STATE, else $STATE_DIRECTORY (systemd), else the data dir."""
    for var in ("ZFLOOD_STATE", "STATE_DIRECTORY"):
        value = os.environ.get(var)
        if value:
            return Path(value.split(":")[0])
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "zflood"


def load_group(state: Path) -> Group | None:
    path = state / GROUP
    try:
        return Group(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LocalError(f"cannot read {path}: {e}") from None


def check_group(state: Path, group: Group) -> None:
    """Refuse a state directory that belongs to another group."""
    old = load_group(state)
    if old is not None and old != group:
        raise LocalError(f"{state} already belongs to group {old.id.hex()}; use another --state")


def save_group(state: Path, group: Group) -> None:
    """Write the group secret (mode 0600, created atomically); refuses to change group."""
    check_group(state, group)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state / (GROUP + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(group.secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state / GROUP)


def open_node(state: Path, group: Group, config: Config = DEFAULT) -> Node:
    from .node import Node

    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Node(path=str(state / STORE), group=group.id, config=config)


def write_endpoints(state: Path, data: dict[str, Any]) -> None:
    tmp = state / (ENDPOINTS + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, state / ENDPOINTS)


def read_endpoints(state: Path) -> dict[str, Any]:
    """What a running daemon wrote at start: where its control and PUB sockets are."""
    try:
        data: dict[str, Any] = json.loads((state / ENDPOINTS).read_text())
    except (OSError, ValueError):
        raise LocalError(f"no zflood daemon has run in {state} (start one: zflood run)") from None
    return data


def endpoints_of(state: Path, pid: int) -> dict[str, Any] | None:
    """`read_endpoints`, once the daemon with this `pid` has written them; None before. A
    killed daemon leaves its file behind: only the one naming this pid counts."""
    try:
        ends = read_endpoints(state)
    except LocalError:
        return None
    return ends if ends.get("pid") == pid else None
