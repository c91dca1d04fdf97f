"""The state directory: where a member keeps its group, its store and its sockets' addresses.

Theory of operation. One directory per group on a machine: `group.key` (the group secret from
`init` or `join`, mode 0600), `node.db` (the store, with the node's own Ed25519 key), `port`
(the TCP port its daemon listens on, chosen at the first start and kept, since static peers
and firewalls name it) and, while a daemon runs, `endpoints.json` (its pid and where its
control and PUB sockets are, so the CLI and the apps find them). The directory is `--state`,
else `--instance NAME` (a systemd instance, zflood@NAME), else $ZFLOOD_STATE, else
$STATE_DIRECTORY (under systemd), else the user's data directory.

A systemd instance keeps its state in /var/lib/zflood/NAME (with DynamicUser= a link into
/var/lib/private, which only root may enter) and its sockets in /run/zflood/NAME, which the
household's `zflood` group may use: so the CLI finds an instance's daemon by its runtime
directory, without reading its state.

A new group's port is derived from its group id, so the members of one group tend to listen
on the same port and several groups on one machine on different ones; a port taken by
something else moves the choice on to the next one. This module imports no daemon, zmq or
asyncio: the CLI and the apps use it without starting anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT, Config
from .errors import ConfigurationError, LocalError, NoIdentity

if TYPE_CHECKING:
    from .identity import Group
    from .node import Node

STORE = "node.db"
GROUP = "group.key"
ENDPOINTS = "endpoints.json"
PORT = "port"
DEFAULT_PORT = 4077  # where every group listened before ports were chosen per group
PORT_RANGE = 256  # a new group's port: DEFAULT_PORT + (derived from the group id) % this

#: where systemd puts an instance's directories (zflood@NAME's StateDirectory= and
#: RuntimeDirectory=); with DynamicUser= the state really lives under /var/lib/private
INSTANCE_STATE = Path("/var/lib/zflood")
INSTANCE_PRIVATE_STATE = Path("/var/lib/private/zflood")
INSTANCE_RUNTIME = Path("/run/zflood")
SOCKET_GROUP = "zflood"  # the group whose members may use an instance's sockets


def default_state_dir() -> Path:
    """--state, else $ZFLOOD_STATE, else $STATE_DIRECTORY (systemd), else the data dir."""
    for var in ("ZFLOOD_STATE", "STATE_DIRECTORY"):
        value = os.environ.get(var)
        if value:
            return Path(value.split(":")[0])
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "zflood"


def instance_state_dir(name: str) -> Path:
    """The state directory of the systemd instance zflood@NAME."""
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise LocalError(f"not an instance name: {name!r} (zflood@NAME: family, work, ...)")
    for top in (INSTANCE_STATE, INSTANCE_PRIVATE_STATE):
        if os.path.lexists(top / name):
            return top / name
    return INSTANCE_STATE / name


def runtime_dir_of(state: Path) -> Path | None:
    """Where the daemon of a systemd instance's state directory has its sockets, or None
    for any other state directory (its daemon keeps them in the state directory)."""
    if state.parent in (INSTANCE_STATE, INSTANCE_PRIVATE_STATE):
        return INSTANCE_RUNTIME / state.name
    return None


def check_owner(state: Path) -> None:
    """Refuse to let root write into a state directory of another user (a systemd
    instance's, typically): the files it made there would lock that user's daemon out."""
    try:
        owner = state.stat().st_uid
    except OSError:
        return  # nothing yet, or not ours to read: opening it says what is wrong
    if os.geteuid() == 0 and owner != 0:
        raise LocalError(
            f"{state} belongs to uid {owner}: what root writes there its daemon could not "
            "read. Start the daemon and talk to it, or run this as that user"
        )


def load_group(state: Path) -> Group | None:
    from .identity import Group

    path = state / GROUP
    try:
        return Group(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LocalError(f"cannot read {path}: {e}") from None
    except ValueError as e:  # damaged: no restart mends it
        raise ConfigurationError(f"cannot read {path}: {e}") from None


def check_group(state: Path, group: Group) -> None:
    """Refuse a state directory that belongs to another group."""
    old = load_group(state)
    if old is not None and old != group:
        raise LocalError(f"{state} already belongs to group {old.id.hex()}; use another --state")


def save_group(state: Path, group: Group) -> None:
    """Write the group secret (mode 0600, created atomically); refuses to change group."""
    check_group(state, group)
    check_owner(state)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state / (GROUP + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(group.secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state / GROUP)


def open_node(state: Path, group: Group, config: Config = DEFAULT, *, create: bool = False) -> Node:
    """The node of a state directory. Without `create`, a store that lost its identity
    (node.db emptied or removed while group.key is still there) is refused: starting afresh
    would silently make this machine someone new in the group."""
    from .node import Node

    check_owner(state)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state / STORE
    if not create and (not path.exists() or path.stat().st_size == 0):
        raise LostIdentity(state)
    try:
        return Node(path=str(path), group=group.id, config=config, create=create)
    except NoIdentity:
        raise LostIdentity(state) from None
    except ConfigurationError as e:  # say which files disagree
        raise ConfigurationError(f"{path}: {e}, not to that of {state / GROUP} "
                                 f"({group.id.hex()})") from None


class LostIdentity(ConfigurationError):
    """A state directory whose store lost its identity: see `open_node`."""

    def __init__(self, state: Path) -> None:
        super().__init__(
            f"{state / STORE} is empty or missing, but {state / GROUP} is there: this "
            "machine's identity and notes are gone. Restore node.db from a backup, or start "
            "as a new member of the group with: zflood run --new-identity"
        )


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


def recorded_port(state: Path) -> int | None:
    """The port this member listened on before, if any (None: choose one)."""
    path = state / PORT
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LocalError(f"cannot read {path}: {e.strerror}") from None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"{path} holds {text[:20]!r}, not a port: fix it, or remove "
                                 "it to let zflood choose one")
    return int(text)


def record_port(state: Path, port: int) -> None:
    tmp = state / (PORT + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, state / PORT)


def port_choices(group: bytes, *, legacy: bool) -> list[int]:
    """The ports a member of `group` tries, in order, when none is recorded: the group's own
    (derived from its id), then the others of the range. `legacy` (a store from before ports
    were recorded) keeps DEFAULT_PORT first: its peers and firewall know that one."""
    start = int.from_bytes(group[:4], "big") % PORT_RANGE
    ports = [DEFAULT_PORT + (start + k) % PORT_RANGE for k in range(PORT_RANGE)]
    if legacy:
        ports.remove(DEFAULT_PORT)
        ports.insert(0, DEFAULT_PORT)
    return ports


def default_name() -> str:
    """A new member's name: this machine's host name, if it can be one."""
    import socket

    from .members import check_name

    try:
        return check_name(socket.gethostname().split(".")[0])
    except LocalError:
        return "member"


def running(state: Path) -> dict[str, Any] | None:
    """The endpoints of the daemon running in `state`, or None if none runs: what the CLI
    and the apps ask before choosing between the local API and the store itself."""
    from .store import in_use

    runtime = runtime_dir_of(state)
    found = _instance_running(runtime) if runtime is not None else None
    if found:
        return found
    # (an instance's state served by a `zflood run` outside systemd has its sockets beside it)
    try:
        ends = read_endpoints(state)
        os.kill(ends["pid"], 0)
    except (LocalError, OSError, KeyError, TypeError):
        return None  # a kill -9 leaves endpoints.json naming a dead pid
    # The pid is alive, but it may have been reused (a kill -9, then a reboot): the daemon
    # is the process holding the store's lock.
    return ends if in_use(state / STORE) else None


def _instance_running(runtime: Path) -> dict[str, Any] | None:
    """A systemd instance's sockets, found in its runtime directory (which exists while it
    runs) without reading its state (which only its own user and root may)."""
    from .local.protocol import ipc_endpoints

    pub, control = ipc_endpoints(runtime)
    try:
        os.stat(control.removeprefix("ipc://"))
    except FileNotFoundError:
        return None
    except PermissionError:
        pass
    else:
        if os.access(control.removeprefix("ipc://"), os.R_OK | os.W_OK):
            return {"control": [control], "pub": [pub]}
    name = runtime.name
    raise LocalError(f"zflood@{name} runs, but only root and members of the group "
                     f"{SOCKET_GROUP} may use it (sudo usermod -aG {SOCKET_GROUP} USER, then log "
                     "in again)")
