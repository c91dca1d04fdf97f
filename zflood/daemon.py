"""The daemon: one asyncio loop wiring the engine, the mesh, discovery and the local API.

Theory of operation. A state directory holds `node.db` (the store, with the node's Ed25519
key) and `group.key` (the group secret from `init` or `join`), both mode 0600. `run` opens the
node, binds the local API (PUB + control), starts the ZAP handler and binds the ROUTER, dials
static peers, announces itself over mDNS and browses for the group; each authenticated peer
link becomes a Channel given to the engine. The loop reads the clock once per tick and passes
it to `Node.tick` and the mesh; it writes `endpoints.json` so the CLI can find the sockets,
tells systemd READY=1 when all of that is up, and feeds the watchdog from the same timer, so a
stuck loop gets the service restarted. SIGTERM or Ctrl-C: STOPPING=1, mDNS goodbye, BYE to
every peer, sockets closed, store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from . import __version__, identity
from .config import DEFAULT, Config
from .discovery import Discovery
from .errors import LocalError
from .identity import Group
from .local import LocalAPI, ipc_endpoints
from .mesh import Link, Mesh
from .node import Node

log = logging.getLogger("zflood.daemon")

STORE = "node.db"
GROUP = "group.key"
ENDPOINTS = "endpoints.json"
DEFAULT_PORT = 4077


# -- the state directory ---------------------------------------------------------------------


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


class ConfigurationError(LocalError):
    """The service cannot start until someone fixes its setup; systemd must not restart it
    (the unit's RestartPreventExitStatus names EX_CONFIG)."""

    exit_status = 78  # EX_CONFIG


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


def open_node(state: Path, group: Group, config: Config = DEFAULT) -> Node:
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Node(path=str(state / STORE), group=group.id, config=config)


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


# -- systemd ---------------------------------------------------------------------------------


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


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class Options:
    listen: str = f"tcp://0.0.0.0:{DEFAULT_PORT}"
    peers: list[str] = field(default_factory=list)
    interfaces: list[str] | None = None
    pub: list[str] = field(default_factory=list)  # extra PUB endpoints (tcp://127.0.0.1:PORT)
    control: list[str] = field(default_factory=list)
    discovery: bool = True
    config: Config = DEFAULT


class Daemon:
    def __init__(self, state: Path, options: Options | None = None) -> None:
        self.state = state
        self.options = options or Options()
        self._stop = asyncio.Event()
        self.node: Node | None = None
        self.mesh: Mesh | None = None
        self.local: LocalAPI | None = None
        self.discovery: Discovery | None = None
        self.listen = ""

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        join_from_credentials(self.state)
        group = load_group(self.state)
        if group is None:
            raise LocalError(f"{self.state} is in no group yet: run `zflood init` or `zflood join`")
        opts = self.options
        runtime = Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or self.state)
        ctx = zmq.asyncio.Context()
        node = self.node = open_node(self.state, group, opts.config)
        stack = contextlib.AsyncExitStack()
        pub, control = ipc_endpoints(runtime)
        try:
            self.local = LocalAPI(
                ctx, node,
                pub=[pub, *opts.pub],
                control=[control, *opts.control],
                status=self.status,
                link=self._set_link,
            )
            await self.local.start()
            stack.push_async_callback(self.local.close)
            self.mesh = Mesh(ctx, node.key, group, listen=opts.listen, config=opts.config,
                             on_link=self._on_link, batch=node.batch)
            stack.push_async_callback(self.mesh.close)
            self.listen = await self.mesh.start()
            for peer in opts.peers:
                self.mesh.dial(peer)
            if opts.discovery:
                self.discovery = Discovery(
                    node.id, group.id, self.mesh.port, on_found=self._found, on_lost=self._lost,
                    interfaces=opts.interfaces,
                )
                stack.push_async_callback(self.discovery.close)
                await self.discovery.start()
            self._write_endpoints()
            log.info("zflood %s: node %s in group %s; listening on %s; %d notes held",
                     __version__, node.id.hex()[:16], group.id.hex(), self.listen, node.count)
            sd_notify("READY=1\nSTATUS=serving")
            await self._serve()
        finally:
            sd_notify("STOPPING=1")
            log.info("stopping")
            await stack.aclose()  # goodbye on mDNS, then BYE to peers, then the local API
            node.close()
            ctx.term()
            with contextlib.suppress(FileNotFoundError):
                (self.state / ENDPOINTS).unlink()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.node is not None
        tick = self.options.config.heartbeat / 2
        feed = watchdog_period()
        next_feed = loop.time()
        while not self._stop.is_set():
            now = loop.time()
            self.node.tick(now)
            assert self.local is not None
            self.local.refresh()
            if feed is not None and now >= next_feed:
                sd_notify("WATCHDOG=1")
                next_feed = now + feed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), tick)

    def _on_link(self, link: Link) -> None:
        assert self.node is not None
        self.node.connect(link)  # the mesh logs links coming and going

    def _set_link(self, node: bytes, up: bool) -> None:
        if self.mesh is not None:
            (self.mesh.heal if up else self.mesh.cut)(node)

    def _found(self, node: bytes, endpoint: str) -> None:
        if self.mesh is not None:
            self.mesh.dial(endpoint, node)

    def _lost(self, node: bytes) -> None:
        if self.mesh is not None:
            self.mesh.forget(node)

    def _write_endpoints(self) -> None:
        assert self.local is not None
        data = {
            "pid": os.getpid(),
            "listen": self.listen,
            "pub": self.local.pub_endpoints,
            "control": self.local.control_endpoints,
        }
        tmp = self.state / (ENDPOINTS + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state / ENDPOINTS)

    def status(self) -> dict[str, Any]:
        assert self.node is not None and self.mesh is not None and self.local is not None
        return {
            **node_status(self.node),
            "listen": self.listen,
            "pub": self.local.pub_endpoints,
            "control": self.local.control_endpoints,
            "peers": self.mesh.links(),
            "discovery": self.discovery is not None,
        }


def node_status(node: Node) -> dict[str, Any]:
    """What `status` says of the node itself, with the daemon running or not."""
    return {
        "node": node.id.hex(),
        "group": node.group.hex(),
        "notes": node.count,
        "heads": {origin.hex(): count for origin, count in node.heads.items()},
        "forks": len(node.forks),
        "ed25519": identity.backend(),  # libsodium with the `fast` extra, else cryptography
    }


def run(state: Path, options: Options) -> int:
    """`zflood run`: serve in the foreground until SIGTERM or Ctrl-C."""
    daemon = Daemon(state, options)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        await daemon.run()

    asyncio.run(main())
    return 0
