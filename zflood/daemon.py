"""The daemon: one asyncio loop wiring the engine, the mesh, discovery and the local API.

Theory of operation. A state directory (zflood.statedir) holds `node.db` (the store, with the
node's Ed25519 key) and `group.key` (the group secret), both mode 0600. `run` opens the node,
binds the local API (PUB + control), starts the ZAP handler and binds the ROUTER, dials static
peers, announces itself over mDNS and browses for the group; each authenticated peer link
becomes a Channel given to the engine. The loop reads the clock once per tick and passes it to
`Node.tick` and the mesh; it writes `endpoints.json` so the CLI can find the sockets, tells
systemd (zflood.systemd) READY=1 when all of that is up, and feeds the watchdog from the same
timer, so a stuck loop gets the service restarted. SIGTERM or Ctrl-C: STOPPING=1, mDNS
goodbye, BYE to every peer, sockets closed, store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from . import __version__
from .config import DEFAULT, Config
from .discovery import Discovery, record_key
from .endpoints import tcp_parts
from .errors import ConfigurationError, LocalError
from .local import LocalAPI, ipc_endpoints
from .members import Members, name_note, short
from .mesh import Link, Mesh
from .node import Node
from .progress import Progress, Report, counted, lacking
from .statedir import (
    ENDPOINTS,
    PORT,
    default_name,
    load_group,
    open_node,
    port_choices,
    record_port,
    recorded_port,
    write_endpoints,
)
from .status import node_status, peer_rows
from .store import CheckProgress, Note
from .systemd import join_from_credentials, sd_notify, watchdog_period

log = logging.getLogger("zflood.daemon")

# -- the daemon ------------------------------------------------------------------------------


#: where peers reach a member that was given no --listen; the port is the member's own
ANY_HOST = "0.0.0.0"


@dataclass
class Options:
    listen: str | None = None  # None: ANY_HOST on the port kept in the state directory
    peers: list[str] = field(default_factory=list)
    interfaces: list[str] | None = None
    pub: list[str] = field(default_factory=list)  # extra PUB endpoints (tcp://127.0.0.1:PORT)
    control: list[str] = field(default_factory=list)
    discovery: bool = True
    socket_group: str | None = None  # members of this group may use the ipc sockets
    config: Config = DEFAULT
    new_identity: bool = False  # a store that lost its identity starts a new one


class Daemon:
    def __init__(self, state: Path, options: Options | None = None) -> None:
        self.state = state
        self.options = options or Options()
        self._stop = asyncio.Event()
        self.node: Node | None = None
        self.mesh: Mesh | None = None
        self.local: LocalAPI | None = None
        self.discovery: Discovery | None = None
        self.members = Members()
        self._renamed: dict[bytes, str] = {}  # names taken since the last report
        self._next_report = 0.0
        self._behind = False  # lacking notes at the last report: a sync under way a while
        self.progress = Progress(2 * self.options.config.progress_interval)
        self.listen = ""
        self._checking: Iterator[CheckProgress] | None = None
        self._last_check: CheckProgress | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        new = load_group(self.state) is None
        join_from_credentials(self.state)
        group = load_group(self.state)
        if group is None:
            raise ConfigurationError(
                f"{self.state} is in no group yet: run `zflood init` or `zflood join`")
        opts = self.options
        runtime = Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or self.state)
        kept = None if opts.listen else recorded_port(self.state)
        node = self.node = open_node(self.state, group, opts.config,
                                         create=opts.new_identity)
        # a store with notes and no port kept ran before ports were: it keeps the old default
        listen = opts.listen or f"tcp://{ANY_HOST}:{kept or _free_port(group.id, node.count > 0)}"
        ctx = zmq.asyncio.Context()
        self.members = Members.load(node, time.time())
        node.subscribe(self._on_note, start=node.count)
        if new:  # joined just now, from the systemd credential: named as `zflood join` names
            node.publish(name_note(default_name(), time.time()))
        stack = contextlib.AsyncExitStack()
        pub, control = ipc_endpoints(runtime)
        try:
            self.local = LocalAPI(
                ctx, node,
                pub=[pub, *opts.pub],
                control=[control, *opts.control],
                status=self.status,
                link=self._set_link,
                check=self._check_step,
            )
            await self.local.start()
            stack.push_async_callback(self.local.close)
            if opts.socket_group:
                _share(runtime, [pub, control], opts.socket_group)
            self.mesh = Mesh(ctx, node.key, group, listen=listen, config=opts.config,
                             on_link=self._on_link, batch=node.batch)
            stack.push_async_callback(self.mesh.close)
            try:
                self.listen = await self.mesh.start()
            except LocalError as e:
                if kept is None:
                    raise
                raise LocalError(
                    f"{e} (the port this member keeps, in {self.state / PORT}, since peers and "
                    "firewalls may name it: free it, or remove that file to choose another)"
                ) from None
            if not opts.listen and kept is None:
                record_port(self.state, self.mesh.port)
                log.info("port %d chosen for this member, kept in %s",
                         self.mesh.port, self.state / PORT)
            for peer in opts.peers:
                self.mesh.dial(peer)
            if opts.peers:  # ZeroMQ retries a name it cannot resolve in silence: say so once
                resolving = asyncio.create_task(
                    _resolve_peers(opts.peers, opts.config.resolve_timeout))
                stack.callback(resolving.cancel)
            if opts.discovery:
                self.discovery = Discovery(
                    node.id, group.id, self.mesh.port, on_found=self._found, on_lost=self._lost,
                    interfaces=opts.interfaces, config=opts.config, record_key=record_key(group),
                )
                stack.push_async_callback(self.discovery.close)
                await self.discovery.start()
            self._write_endpoints()
            log.info("zflood %s: node %s in group %s; listening on %s; %s held",
                     __version__, self.members.label(node.id), group.id.hex(), self.listen,
                     counted(node.count, "note"))
            sd_notify("READY=1\nSTATUS=serving")
            await self._serve()
        finally:
            sd_notify("STOPPING=1")
            log.info("stopping")
            await stack.aclose()  # goodbye on mDNS, then BYE to peers, then the local API
            with contextlib.suppress(Exception):  # a full disk: the next start replays it
                self.members.save(node)
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
        self._next_report = next_feed
        pump = asyncio.create_task(self._pump(self.node))
        try:
            while not self._stop.is_set():
                now = loop.time()
                self.node.tick(now)
                assert self.local is not None
                self.local.refresh()
                self._report(now)
                if feed is not None and now >= next_feed:
                    sd_notify("WATCHDOG=1")
                    next_feed = now + feed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), tick)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    @staticmethod
    async def _pump(node: Node) -> None:
        """Serve what peers asked for one step at a time, the loop getting a turn between
        steps (the engine serves one step itself at the end of each batch of frames)."""
        work = asyncio.Event()
        node.wake = work.set
        poll = node.config.backlog_poll
        try:
            while True:
                await work.wait()
                work.clear()
                while node.serving:
                    if node.serve():
                        await asyncio.sleep(0)
                        continue
                    # what waits is for peers that leave peer_backlog bytes unread: look
                    # again soon, or at once when new work comes
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(work.wait(), poll)
                    work.clear()
        finally:
            node.wake = None

    def _report(self, now: float) -> None:
        """Sample the sync's progress; every progress_interval log it if a sync is under way
        (or just ended), log renames, and save the member table."""
        assert self.node is not None
        self.progress.sample(now, self.node.count)
        if now < self._next_report:
            return
        self._next_report = now + self.options.config.progress_interval
        report = self.sync_report()
        if self._behind:  # still catching up, or just caught up
            log.info("%s", report.line())
        self._behind = report.lacking > 0
        self._log_renames()
        try:
            self.members.save(self.node, self.options.config.member_rows_per_save)
        except Exception as e:  # a full disk, say: the table is rebuilt from the notes
            log.warning("cannot save the member table: %s", e)

    def _on_link(self, link: Link) -> None:
        assert self.node is not None
        log.info("linked to member %s", self.members.label(link.node))
        self.node.connect(link)  # the mesh logs links coming and going

    def _on_note(self, note: Note) -> None:
        name = self.members.see(note, time.time())
        if name is not None and (note.origin in self._renamed or len(self._renamed) < 16):
            self._renamed[note.origin] = name  # logged with the next report: a few lines

    def _log_renames(self) -> None:
        renamed, self._renamed = self._renamed, {}
        for origin, name in renamed.items():
            log.info("member %s is called %s", short(origin), name)

    def _set_link(self, node: bytes, up: bool) -> None:
        if self.mesh is not None:
            (self.mesh.heal if up else self.mesh.cut)(node)

    def _check_step(self, restart: bool) -> dict[str, Any]:
        """One step of `zflood check` (a bounded number of notes, so the loop keeps serving
        between steps; SQLite's integrity check comes first, whole)."""
        assert self.node is not None
        if restart or self._checking is None:
            self._checking = self.node.check_store()
        step = next(self._checking, None)
        if step is None:
            step = self._last_check
            if step is None:
                raise LocalError("the store check ended; start it again")
        done = step.checked >= step.total
        self._last_check = step
        if done:
            self._checking = None
        return {"checked": step.checked, "total": step.total, "done": done,
                "damaged": {o.hex(): s[:1000] for o, s in step.damaged.items()},
                "integrity": step.integrity}

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
        write_endpoints(self.state, data)

    def sync_report(self) -> Report:
        """How far behind its linked peers this node is, and how fast it catches up."""
        assert self.node is not None
        node = self.node
        peers = [p["heads"] for p in node.peers() if p["ready"]]
        return self.progress.report(node.count, lacking(node.heads, peers))  # type: ignore[arg-type]

    def status(self) -> dict[str, Any]:
        assert self.node is not None and self.mesh is not None and self.local is not None
        engine_peers = self.node.peers()
        linked = frozenset(p["node"] for p in engine_peers
                           if p["ready"] and isinstance(p["node"], bytes))
        return {
            **node_status(self.node, self.members, linked,
                          self.options.config.status_members),
            "listen": self.listen,
            "pub": self.local.pub_endpoints,
            "control": self.local.control_endpoints,
            "mesh": self.mesh.stats(),  # what its bounds hold and have refused
            # notes peers asked for that wait, and how often a peer that does not read held
            # serving back
            "serve": {"queued_notes": self.node.serve_queued,
                      "backlog_waits": self.node.stats.backlog_waits},
            "peers": peer_rows(self.mesh.links(), engine_peers, self.node.heads, self.members,
                               time.time()),
            "sync": self.sync_report().as_dict(),
            "discovery": self.discovery is not None,
            "local": self.local.stats(),  # what waits for local clients that do not read
        }


async def _resolve_peers(peers: list[str], timeout: float) -> None:
    """Warn of each static peer whose host name does not resolve now (a typo, or a name only
    another network knows); it is dialled all the same, and links once the name resolves."""
    loop = asyncio.get_running_loop()
    for peer in peers:
        parts = tcp_parts(peer)
        if parts is None:
            continue
        host, port = parts[0].strip("[]"), parts[1]
        try:
            await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                   timeout)
        except (OSError, TimeoutError) as e:
            reason = "no answer" if isinstance(e, TimeoutError) else e.strerror or str(e)
            log.warning("peer %s: cannot resolve %s (%s); dialling it anyway", peer, host,
                        reason)


def _free_port(group: bytes, legacy: bool) -> int:
    """The first port of this group's choices that nothing listens on (0: any port, if all
    are taken)."""
    for port in port_choices(group, legacy=legacy):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as libzmq binds: a port left in TIME_WAIT by our previous run is free
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ANY_HOST, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise LocalError(f"cannot listen on port {port}: {e.strerror}") from None
        return port
    log.warning("ports %d-%d are all taken: listening on one the system picks",
                min(port_choices(group, legacy=False)), max(port_choices(group, legacy=False)))
    return 0


def _share(directory: Path, endpoints: list[str], group: str) -> None:
    """Let members of `group` use the local API's ipc sockets: the sockets become
    group-readable and -writable, and the directory holding them belongs to the group
    (whose mode, RuntimeDirectoryMode= under systemd, decides who may enter)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigurationError(
            f"--socket-group {group}: no such group (systemd-sysusers creates it from "
            "zflood's sysusers.d file; or: groupadd --system zflood)") from None
    paths = [e.removeprefix("ipc://") for e in endpoints if e.startswith("ipc://")]
    try:
        for path in [str(directory), *paths]:
            os.chown(path, -1, gid)
        for path in paths:
            os.chmod(path, 0o660)
    except PermissionError:
        raise ConfigurationError(
            f"--socket-group {group}: this daemon is not in that group (the unit's "
            f"SupplementaryGroups={group} puts it there)") from None


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
