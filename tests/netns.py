"""A LAN in network namespaces, for tests that need real multicast and real partitions.

Theory of operation. A `Lab` builds DESIGN.md's lab as root with iproute2: a hub namespace
holding a bridge (multicast snooping off, so every multicast frame floods to every port, as on
a home switch without IGMP) and one namespace per host, each joined to the bridge by a veth
pair created directly inside the two namespaces. Nothing is ever created in the root
namespace and no host has a route out: a host knows 10.77.0.0/24 and 224.0.0.0/4 on its veth
and nothing else, so whatever a test sends stays on the lab's wire.

Namespace names carry a per-lab suffix (creator pid + random), so labs of concurrent runs never
collide; interface names live inside the lab's namespaces and so need no suffix (and stay far
below the kernel's 15-character limit). A lab whose creating process died without tearing it
down (kill -9 of pytest) is swept by the next `Lab` made on the machine.

Every process started through `Lab.run` is tracked; teardown stops each one by pid (SIGTERM to
its process group, then SIGKILL after a bounded wait), kills by pid whatever is still inside the
lab's namespaces (a daemon that forked), then deletes the namespaces, which takes the veths and
the bridge with them. Teardown runs whether or not the test failed.

IPv6 duplicate address detection is off on the hosts' veths, so their link-local addresses are
usable (bindable) as soon as the lab is built rather than a second or two later.

Avahi. `Lab.start_avahi(i)` runs, inside host i's namespace, a private D-Bus "system" bus on a
socket in the lab's temporary directory, and avahi-daemon (as root, no chroot, no privilege
drop) in a private mount namespace whose /run is a directory of its own: avahi-daemon keeps its
pid file in /run/avahi-daemon and refuses to start while the pid there is alive, so two daemons
on one machine need two /run's. The daemon and the clients (avahi-browse, avahi-publish) find
the bus through $DBUS_SYSTEM_BUS_ADDRESS, which both libdbus and libavahi-client read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

SUBNET = "10.77.0"  # hosts get SUBNET.(index + 1)/24
PREFIX_LEN = 24
HOST_IF = "veth0"  # each host's interface, inside its own namespace
BRIDGE = "br0"  # inside the hub namespace
NS_PREFIX = "zfl-"
_NS_RE = re.compile(r"^zfl-(\d+)-[0-9a-f]{4}-(hub|h\d+)$")

# Every bounded wait in this module uses one of these.
IP_TIMEOUT = 10.0  # one `ip` command
LINK_TIMEOUT = 10.0  # a veth and its bridge port reaching "forwarding"
STOP_TIMEOUT = 5.0  # a tracked process exiting after SIGTERM, then after SIGKILL
AVAHI_TIMEOUT = 15.0  # dbus-daemon printing its address; avahi-daemon finishing its startup
POLL = 0.02  # interval when polling a condition that offers no event to wait on


class LabError(RuntimeError):
    """The lab could not be built, driven or torn down; the message holds the command's output."""


@dataclass(frozen=True)
class Host:
    index: int  # position in Lab.hosts
    name: str  # network namespace name, for `ip netns exec` / `ip -n`
    addr: str  # IPv4 address of `ifname`
    ifname: str  # the host's interface, inside its namespace
    hub_ifname: str  # the other end of its veth: a bridge port in the hub namespace


def _ip(*args: str, timeout: float = IP_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"ip {' '.join(args)}: no answer in {timeout} s") from e
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    # `ip netns list` prints "name" or "name (id: N)".
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    try:
        out = _ip("netns", "pids", ns)
    except LabError:
        return []  # the namespace is already gone
    return [int(p) for p in out.split()]


def _wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` until it holds; for states the kernel offers no event for (link state)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def _kill_namespace_pids(ns: str) -> None:
    """SIGKILL, by pid, every process still inside `ns`, and wait until none is left."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids := _netns_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            raise LabError(f"processes {pids} in namespace {ns} survived SIGKILL")
        time.sleep(POLL)


def sweep_stale() -> list[str]:
    """Delete labs left by processes that died without tearing them down; return their names.

    Only namespaces named by this module whose creator pid is gone are touched, so labs of
    concurrent runs are safe. Processes left inside them were started by that dead run.
    """
    swept = []
    for ns in _netns_names():
        m = _NS_RE.match(ns)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        _kill_namespace_pids(ns)
        with contextlib.suppress(LabError):
            _ip("netns", "del", ns)
        swept.append(ns)
    return swept


class Lines:
    """Drains a child's output pipe on a thread, keeping the lines so a test can await one.

    Get one with `lab.watch(proc.stdout)` for a process started with stdout=PIPE, text=True.

    Draining matters as much as reading: a child blocks once a pipe nobody reads fills up.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        # This thread alone closes the stream, at EOF: closing it from another thread would
        # wait for the lock its blocked read holds.
        with contextlib.suppress(ValueError, OSError), stream:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0) -> str:
        """The first line matching the regex `pattern` among lines[after:], waiting for it;
        LabError at EOF or after `timeout`. `after=lines.count()` awaits only new lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "the process closed its output" if self._eof else f"{timeout} s passed"
                    raise LabError(f"no line matching {pattern!r} ({why}): {self.text()!r}")
                self._cond.wait(left)

    def count(self) -> int:
        """How many lines have arrived so far."""
        with self._cond:
            return len(self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class Avahi:
    """An avahi-daemon, with its private system bus, running in one host's namespace."""

    host: Host
    bus_address: str  # what DBUS_SYSTEM_BUS_ADDRESS must be for Avahi clients on this host
    env: dict[str, str]  # os.environ plus that: pass as `env=` to `Lab.run` for any client
    dbus: subprocess.Popen[str]
    daemon: subprocess.Popen[str]
    log: Lines  # avahi-daemon's stderr, for diagnostics


@dataclass(frozen=True)
class Resolved:
    """One resolved service from `avahi-browse -rp` (a line starting with "=")."""

    interface: str
    protocol: str  # "IPv4" or "IPv6"
    name: str  # the instance name, unescaped
    service_type: str
    domain: str
    hostname: str
    address: str
    port: int
    txt: tuple[str, ...] = ()


def _unescape_avahi(s: str) -> str:
    # avahi-browse -p escapes "\" and "." as "\\" and "\.", and other bytes as \DDD (decimal).
    def repl(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code)) if code.isdigit() else code

    return re.sub(r"\\(\d{3}|.)", repl, s)


def parse_resolved(browse_output: str) -> list[Resolved]:
    """The resolved services in `avahi-browse -rp` output, in order of appearance."""
    found = []
    for line in browse_output.splitlines():
        parts = line.split(";")
        if len(parts) < 9 or parts[0] != "=":
            continue
        txt = re.findall(r'"((?:[^"\\]|\\.)*)"', ";".join(parts[9:]))
        found.append(
            Resolved(
                interface=parts[1],
                protocol=parts[2],
                name=_unescape_avahi(parts[3]),
                service_type=parts[4],
                domain=parts[5],
                hostname=parts[6],
                address=parts[7],
                port=int(parts[8]),
                txt=tuple(txt),
            )
        )
    return found


class Lab:
    """`with Lab(3) as lab:` three hosts on one bridge; see the module's docstring.

    Hosts: lab.hosts[i].name (namespace), .addr (10.77.0.(i+1)), .ifname ("veth0").
    Processes: lab.run(i, argv, **popen_kwargs) -> Popen, tracked; lab.watch(proc.stdout)
    -> Lines to await output; lab.call(i, argv, timeout=) -> CompletedProcess; lab.stop(proc).
    Partitions: lab.set_link(i, up=False/True), lab.link_is_up(i).
    Avahi: lab.start_avahi(i) -> Avahi (.env for clients), lab.avahi_publish(i, name, type,
    port, txt), lab.avahi_browse(i, type) -> raw `avahi-browse -rpt` text,
    lab.wait_browse(i, type, until) -> [Resolved].
    """

    _available: ClassVar[tuple[bool, str] | None] = None

    def __init__(self, n_hosts: int) -> None:
        if not 1 <= n_hosts <= 250:
            raise ValueError(f"a lab holds 1 to 250 hosts, not {n_hosts}")
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
        self.hub = f"{self.prefix}-hub"
        self.hosts = [
            Host(
                index=i,
                name=f"{self.prefix}-h{i}",
                addr=f"{SUBNET}.{i + 1}",
                ifname=HOST_IF,
                hub_ifname=f"h{i}",
            )
            for i in range(n_hosts)
        ]
        self._made: list[str] = []  # namespaces created so far, for teardown
        self._procs: list[subprocess.Popen[Any]] = []
        self._leaders: set[int] = set()  # pids of tracked processes that lead their group
        self._pumps: list[Lines] = []
        self._pumped: set[int] = set()  # id() of the streams the pumps own
        self._avahi: dict[int, Avahi] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._closed = False

    # -- availability ---------------------------------------------------------------------

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") if this process can build labs, else (False, why): for pytest.skip."""
        if cls._available is None:
            cls._available = cls._probe()
        return cls._available

    @staticmethod
    def _probe() -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, "network namespaces need root"
        for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
            if shutil.which(tool) is None:
                return False, f"`{tool}` is not installed (apt-get install {package})"
        probe = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-hub"
        try:
            _ip("netns", "add", probe)
        except LabError as e:
            return False, f"cannot create a network namespace: {e}"
        try:
            _ip("-n", probe, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
            _ip("-n", probe, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb")
        except LabError as e:
            return False, f"cannot create a bridge or a veth pair in a namespace: {e}"
        finally:
            with contextlib.suppress(LabError):
                _ip("netns", "del", probe)
        return True, ""

    @staticmethod
    def avahi_available() -> tuple[bool, str]:
        """(True, "") if avahi-daemon, its clients and dbus-daemon are installed."""
        for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon", "mount"):
            if shutil.which(tool) is None:
                return False, f"`{tool}` is not installed (avahi-daemon, avahi-utils, dbus)"
        return True, ""

    # -- building and tearing down --------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.close()
        except LabError:
            if exc is None:
                raise
            # The test's own failure is the news; the teardown trouble would only hide it.

    def _build(self) -> None:
        sweep_stale()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.prefix}-")
        self._add_ns(self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.hub, "link", "set", BRIDGE, "up")
        for h in self.hosts:
            self._add_ns(h.name)
            # Both ends are born in their namespaces: the root namespace never sees them.
            _ip(
                "link",
                "add",
                "name",
                h.ifname,
                "netns",
                h.name,
                "type",
                "veth",
                "peer",
                "name",
                h.hub_ifname,
                "netns",
                self.hub,
            )
            _ip("-n", self.hub, "link", "set", h.hub_ifname, "master", BRIDGE, "up")
            _ip("-n", h.name, "link", "set", "lo", "up")
            self._no_dad(h)
            _ip("-n", h.name, "addr", "add", f"{h.addr}/{PREFIX_LEN}", "dev", h.ifname)
            _ip("-n", h.name, "link", "set", h.ifname, "multicast", "on", "up")
            # No default route: the subnet route comes with the address, multicast gets its own.
            _ip("-n", h.name, "route", "add", "224.0.0.0/4", "dev", h.ifname)
        for h in self.hosts:
            self._wait_link(h, up=True)

    def _no_dad(self, h: Host) -> None:
        # Duplicate address detection holds a new IPv6 link-local address "tentative", and
        # unbindable, for a second or two; on a wire the lab wired itself no duplicate can
        # exist, so the address is usable as soon as the link is up.
        knob = f"/proc/sys/net/ipv6/conf/{h.ifname}/accept_dad"
        self.call(h.index, ["sh", "-c", f"[ ! -e {knob} ] || echo 0 > {knob}"])

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def close(self) -> None:
        """Stop every process, delete every namespace; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self._procs):
            try:
                self.stop(proc)
            except LabError as e:
                errors.append(str(e))
        for ns in reversed(self._made):
            try:
                _kill_namespace_pids(ns)
            except LabError as e:
                errors.append(str(e))
            try:
                _ip("netns", "del", ns)
            except LabError as e:
                errors.append(str(e))
        for pump in self._pumps:
            pump.join(STOP_TIMEOUT)
        if self._tmp is not None:
            self._tmp.cleanup()
        if errors:
            raise LabError("teardown: " + "; ".join(errors))

    # -- running things in a host ---------------------------------------------------------

    def run(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in host i's namespace; teardown stops it if the test has not.

        Popen's keyword arguments pass through (stdout=PIPE, text=True, env=...). The process
        gets a session of its own unless told otherwise, so teardown's signal reaches its
        children too. `ip netns exec` execs the command, so the pid is the command's own.
        """
        if self._tmp is None or self._closed:
            raise LabError("use the lab inside `with`")
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[i].name, *argv], **popen_kwargs
        )
        self._procs.append(proc)
        if popen_kwargs["start_new_session"]:
            self._leaders.add(proc.pid)
        return proc

    def call(
        self,
        i: int,
        argv: Sequence[str],
        *,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in host i's namespace to completion (killed after `timeout`)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.hosts[i].name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            check=False,
        )
        if check and done.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} on host {i} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def stop(self, proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
        """Stop a process from `run`: SIGTERM, then SIGKILL after `timeout`; its exit code."""
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired as e:
                    raise LabError(f"pid {proc.pid} survived SIGKILL for {timeout} s") from e
        if proc.pid in self._leaders:
            # Whatever the leader left behind in its group (a shell's children) goes too. The
            # kernel does not reuse a pid while a group of that id has members, so this
            # reaches only the group `run` created; once done, that pid is forgotten, since
            # after the group empties the number may be handed to someone else.
            self._leaders.discard(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            # Streams a pump reads are closed by the pump at EOF (see Lines).
            if stream is not None and id(stream) not in self._pumped:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def _signal(self, proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if proc.pid in self._leaders:
                os.killpg(proc.pid, sig)  # its group's id is its pid (start_new_session)
            else:
                proc.send_signal(sig)

    # -- partitions -----------------------------------------------------------------------

    def set_link(self, i: int, up: bool) -> None:
        """Cut host i off the bridge (up=False) or plug it back in, and wait for the result.

        The bridge-side end goes down, so host i's veth loses carrier: nothing it sends
        leaves, nothing reaches it, and its address and routes stay as they were, as when
        a cable is pulled.
        """
        h = self.hosts[i]
        _ip("-n", self.hub, "link", "set", h.hub_ifname, "up" if up else "down")
        self._wait_link(h, up=up)

    def link_is_up(self, i: int) -> bool:
        """True once host i's veth has carrier and its bridge port forwards."""
        h = self.hosts[i]
        host_side = json.loads(_ip("-j", "-n", h.name, "link", "show", "dev", h.ifname))[0]
        hub_side = json.loads(_ip("-d", "-j", "-n", self.hub, "link", "show", "dev", h.hub_ifname))[
            0
        ]
        port_state = hub_side.get("linkinfo", {}).get("info_slave_data", {}).get("state")
        return bool(host_side.get("operstate") == "UP" and port_state == "forwarding")

    def _wait_link(self, h: Host, *, up: bool) -> None:
        _wait_until(
            lambda: self.link_is_up(h.index) == up,
            LINK_TIMEOUT,
            f"host {h.index}'s link to go {'up' if up else 'down'}",
        )

    # -- avahi ----------------------------------------------------------------------------

    def start_avahi(self, i: int, *, use_ipv6: bool = False) -> Avahi:
        """Start a D-Bus system bus and avahi-daemon in host i; return once Avahi is serving.

        IPv6 is off by default: the lab's hosts have only link-local IPv6 addresses, and
        IPv4 alone keeps what a browse returns to one line per service.
        """
        if i in self._avahi:
            return self._avahi[i]
        ok, why = self.avahi_available()
        if not ok:
            raise LabError(why)
        assert self._tmp is not None, "use the lab inside `with`"
        h = self.hosts[i]
        d = Path(self._tmp.name) / f"avahi-h{i}"
        (d / "run").mkdir(parents=True)
        bus = d / "system_bus_socket"
        (d / "dbus.conf").write_text(DBUS_CONF.format(socket=bus))
        (d / "avahi-daemon.conf").write_text(
            _AVAHI_CONF.format(
                host_name=f"zfl-h{i}", ifname=h.ifname, ipv6="yes" if use_ipv6 else "no"
            )
        )
        bus_address = f"unix:path={bus}"
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address}

        dbus = self.run(
            i,
            [
                "dbus-daemon",
                f"--config-file={d / 'dbus.conf'}",
                "--nofork",
                "--nopidfile",
                "--print-address=1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        dbus_out = self.watch(dbus.stdout)
        # The address is printed once the socket listens: an event, not a guess.
        dbus_out.wait_for(re.escape(bus_address), AVAHI_TIMEOUT)

        # avahi-daemon's /run is the directory's own (see the module docstring); it runs in
        # the foreground so that its pid is the one tracked, and logs to stderr.
        daemon = self.run(
            i,
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$0" /run && exec "$@"',
                str(d / "run"),
                "avahi-daemon",
                "--no-drop-root",
                "--no-chroot",
                "--no-rlimits",
                "--no-proc-title",
                "-f",
                str(d / "avahi-daemon.conf"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        log = self.watch(daemon.stderr)
        log.wait_for(r"^Server startup complete\.", AVAHI_TIMEOUT)
        avahi = Avahi(host=h, bus_address=bus_address, env=env, dbus=dbus, daemon=daemon, log=log)
        self._avahi[i] = avahi
        return avahi

    def watch(self, stream: IO[str] | None) -> Lines:
        """Drain a tracked process's text pipe from now on; await its lines with `wait_for`."""
        if stream is None:
            raise LabError("start the process with stdout=PIPE (or stderr=PIPE) and text=True")
        self._pumped.add(id(stream))
        pump = Lines(stream)
        self._pumps.append(pump)
        return pump

    def _avahi_of(self, i: int) -> Avahi:
        try:
            return self._avahi[i]
        except KeyError:
            raise LabError(f"no avahi-daemon on host {i}: call start_avahi({i}) first") from None

    def avahi_browse(self, i: int, service_type: str, *, timeout: float = 10.0) -> str:
        """`avahi-browse -rpt service_type` on host i: what its avahi-daemon knows right now.

        -t returns once the daemon says its list is complete (about a second after the
        query); a service announced a moment ago may still be missing, so callers poll.
        """
        avahi = self._avahi_of(i)
        return self.call(
            i, ["avahi-browse", "-rpt", service_type], timeout=timeout, env=avahi.env
        ).stdout

    def wait_browse(
        self,
        i: int,
        service_type: str,
        until: Callable[[list[Resolved]], bool],
        *,
        timeout: float = 15.0,
    ) -> list[Resolved]:
        """Browse on host i until `until(resolved services)` holds; LabError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            found = parse_resolved(self.avahi_browse(i, service_type, timeout=max(left, 1.0)))
            if until(found):
                return found
            if time.monotonic() >= deadline:
                raise LabError(f"browse for {service_type} on host {i} never satisfied: {found}")

    def avahi_publish(
        self, i: int, name: str, service_type: str, port: int, txt: Sequence[str] = ()
    ) -> subprocess.Popen[str]:
        """`avahi-publish -s` on host i, returned once Avahi has established the name.

        The service stays published while the process runs: `lab.stop(proc)` withdraws it
        (Avahi sends the goodbye).
        """
        avahi = self._avahi_of(i)
        proc = self.run(
            i,
            ["avahi-publish", "-s", name, service_type, str(port), *txt],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=avahi.env,
        )
        self.watch(proc.stdout).wait_for(r"^Established under name", AVAHI_TIMEOUT)
        return proc

    # -- helpers for tests ----------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """The names of this lab's namespaces (hub first), whether or not they exist yet."""
        return [self.hub, *(h.name for h in self.hosts)]

    def tracked(self) -> Iterator[subprocess.Popen[Any]]:
        """Every process started through `run`, in order."""
        return iter(list(self._procs))


# A bus that lets anyone own any name and send anything: it is reachable only through a
# socket in the lab's private temporary directory, by root, inside one test.
DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""

# Host names must differ on the link or Avahi's probes rename them; all namespaces share the
# machine's hostname, so each daemon is given one. Wide-area lookups would query DNS servers
# the lab cannot reach.
_AVAHI_CONF = """[server]
host-name={host_name}
use-ipv4=yes
use-ipv6={ipv6}
allow-interfaces={ifname}
enable-dbus=yes

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
"""


def lab_fixture(n_hosts: int) -> Any:
    """A pytest fixture giving a `Lab` of n hosts, skipped with the reason where labs can't be
    made: `lab3 = lab_fixture(3)` at a test module's top level, then `def test_x(lab3): ...`.
    """
    import pytest

    @pytest.fixture
    def lab() -> Iterator[Lab]:
        ok, why = Lab.available()
        if not ok:
            pytest.skip(why)
        with Lab(n_hosts) as made:
            yield made

    return lab
