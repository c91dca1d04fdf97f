"""Discovery over real Zeroconf, on loopback only.

Multicast on loopback works here as is (no `ip link set lo multicast on`, no route): python-
zeroconf bound to 127.0.0.1 sends to 224.0.0.251 through lo and hears itself and others. So the
in-process tests run on 127.0.0.1 in this namespace and change nothing in it. Tests that need
other processes (another Discovery, avahi) run them in a network namespace they create (only
lo, up) and delete; they skip, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import zmq.asyncio
from logwatch import LogWatch
from netns import DBUS_CONF
from zeroconf import ServiceInfo, current_time_millis
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncZeroconf

from zflood.config import DEFAULT
from zflood.discovery import (
    SERVICE_TYPE,
    Discovery,
    best_address,
    host_addresses,
    instance_label,
    record_key,
    record_tag,
)
from zflood.errors import LocalError
from zflood.identity import Group, SigningKey
from zflood.mesh import Link, Mesh

WAIT = 5.0
_FLAGS_QR_RESPONSE, _FLAGS_AA = 0x8000, 0x0400  # an mDNS response, authoritative
_TYPE_PTR, _CLASS_IN = 12, 1
ROOT = Path(__file__).resolve().parents[1]


def run(main: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    """Bound the test; fail it if a task, a thread or a file descriptor outlives it."""

    async def guarded() -> None:
        await asyncio.wait_for(main(), timeout)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"tasks left running: {left}"

    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    asyncio.run(guarded())
    # asyncio's child watcher reaps each subprocess in an "asyncio-waitpid-N" thread that ends just
    # after the process does: an event we can await (join), not a leak.
    for thread in threading.enumerate():
        if thread.name.startswith("asyncio-waitpid-"):
            thread.join(WAIT)
    assert threading.active_count() == threads, "a thread outlived the test"
    assert len(os.listdir("/proc/self/fd")) == fds, "a socket or file was left open"


class Seen:
    """A Discovery on 127.0.0.1 with what it reported, as awaitable queues."""

    def __init__(self, group: bytes, port: int) -> None:
        self.node = os.urandom(32)
        self.port = port
        self.found: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        self.lost: asyncio.Queue[bytes] = asyncio.Queue()
        self.discovery = Discovery(
            self.node, group, port, interfaces=["127.0.0.1"],
            on_found=lambda node, endpoint: self.found.put_nowait((node, endpoint)),
            on_lost=self.lost.put_nowait,
        )

    def report(self, node: bytes, endpoint: str) -> None:
        self.found.put_nowait((node, endpoint))

    async def next_found(self) -> tuple[bytes, str]:
        return await asyncio.wait_for(self.found.get(), WAIT)


@contextlib.asynccontextmanager
async def discoveries(*specs: tuple[bytes, int]) -> AsyncIterator[list[Seen]]:
    seen = [Seen(group, port) for group, port in specs]
    try:
        for s in seen:
            await s.discovery.start()
        yield seen
    finally:
        for s in seen:
            await s.discovery.close()


# -- in-process, on 127.0.0.1 ------------------------------------------------------------------


def test_two_members_find_each_other_within_two_seconds() -> None:
    async def main() -> None:
        group = os.urandom(16)
        t0 = time.monotonic()
        async with discoveries((group, 7001), (group, 7002)) as (a, b):
            assert await a.next_found() == (b.node, "tcp://127.0.0.1:7002")
            assert await b.next_found() == (a.node, "tcp://127.0.0.1:7001")
            elapsed = time.monotonic() - t0
            print(f"start of the first to both on_found: {1000 * elapsed:.1f} ms")
            assert elapsed < 2.0

    run(main)


def test_other_group_and_ourselves_are_ignored() -> None:
    async def main() -> None:
        ours, theirs = os.urandom(16), os.urandom(16)
        specs = [(ours, 7011), (theirs, 7012), (theirs, 7013), (ours, 7014)]
        async with discoveries(*specs) as (a, x, y, b):
            # x and y finding each other shows their records were out there for a to see.
            assert (await x.next_found())[0] == y.node
            assert (await y.next_found())[0] == x.node
            assert (await a.next_found())[0] == b.node
            assert (await b.next_found())[0] == a.node
        assert a.found.empty() and b.found.empty() and x.found.empty() and y.found.empty()

    run(main)


def test_close_sends_a_goodbye_seen_as_lost() -> None:
    async def main() -> None:
        group = os.urandom(16)
        async with discoveries((group, 7021)) as (a,):
            async with discoveries((group, 7022)) as (b,):
                await a.next_found()
                t0 = time.monotonic()
            assert await asyncio.wait_for(a.lost.get(), WAIT) == b.node
            print(f"close() to on_lost: {1000 * (time.monotonic() - t0):.1f} ms")

    run(main)


def test_malformed_or_foreign_records_are_ignored() -> None:
    async def main() -> None:
        group = os.urandom(16)
        bad = [
            {"v": "1", "g": group.hex(), "n": "not hex"},
            {"v": "1", "g": group.hex(), "n": "ab" * 31},
            {"v": "2", "g": group.hex(), "n": os.urandom(32).hex()},
            {"g": group.hex(), "n": os.urandom(32).hex()},
        ]
        zc = AsyncZeroconf(interfaces=["127.0.0.1"])
        infos = [
            ServiceInfo(SERVICE_TYPE, f"bad{i}.{SERVICE_TYPE}", port=7030 + i, properties=p,
                        server=f"bad{i}.local.", parsed_addresses=["127.0.0.1"])
            for i, p in enumerate(bad)
        ]
        try:
            for info in infos:
                await zc.async_register_service(info, cooperating_responders=True)
            with LogWatch("malformed", "zflood.discovery") as malformed:
                async with discoveries((group, 7039)) as (a,):
                    await asyncio.wait_for(malformed.seen.wait(), WAIT)
                    good = Seen(group, 7038)
                    await good.discovery.start()
                    try:
                        assert await a.next_found() == (good.node, "tcp://127.0.0.1:7038")
                    finally:
                        await good.discovery.close()
            assert a.found.empty()
        finally:
            await zc.async_close()

    run(main)


def test_interface_names_and_addresses_resolve() -> None:
    assert host_addresses(["lo"]) == ["127.0.0.1"]
    assert host_addresses(["127.0.0.1", "::1"]) == ["127.0.0.1", "::1"]
    assert host_addresses(None)  # something, at least loopback
    with pytest.raises(LocalError):
        host_addresses(["no-such-if0"])


def test_best_address_skips_our_own_and_prefers_our_subnet() -> None:
    ours = ["192.168.1.7", "172.17.0.1"]
    assert best_address(["172.17.0.1", "10.0.0.3", "192.168.1.20"], ours) == "192.168.1.20"
    assert best_address(["127.0.0.1"], ["127.0.0.1"]) == "127.0.0.1"  # same host
    assert best_address([], ours) is None


def test_instance_label_is_a_dns_label_holding_the_node_id() -> None:
    label = instance_label(bytes(range(32)))
    assert len(label) <= 63 and label.isascii() and label == label.lower()
    assert instance_label(bytes(32)) != instance_label(bytes(31) + b"\x01")


# -- other processes, in a network namespace ---------------------------------------------------

_AGENT = """
import asyncio, sys, time
from zflood.discovery import Discovery
async def main():
    node, group, port = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    say = lambda *a: print(*a, flush=True)
    d = Discovery(node, group, port, interfaces=["127.0.0.1"],
                  on_found=lambda n, e: say("found", n.hex(), e),
                  on_lost=lambda n: say("lost", n.hex()))
    t0 = time.monotonic()
    await d.start()
    say("ready", f"{1000 * (time.monotonic() - t0):.2f}")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await d.close()
    say("closed")
asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with only lo, up; deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    name = f"zft-{os.urandom(4).hex()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


class Proc:
    """A process inside the namespace; its output read line by line, each read bounded."""

    def __init__(self, proc: asyncio.subprocess.Process, stream: asyncio.StreamReader) -> None:
        self.proc = proc
        self.stream = stream

    @classmethod
    async def start(cls, ns: str, *argv: str, stderr: bool = False,
                    env: dict[str, str] | None = None) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, *argv,  # ip execs argv: the pid is argv's own
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr else None,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        stream = proc.stderr if stderr else proc.stdout
        assert stream is not None
        return cls(proc, stream)

    async def line_with(self, *words: str) -> str:
        while True:
            line = (await asyncio.wait_for(self.stream.readline(), WAIT)).decode()
            assert line, f"{self.proc.pid} ended before saying {words}"
            if all(w in line for w in words):
                return line.strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), WAIT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def agent(ns: str, node: bytes, group: bytes, port: int) -> Proc:
    p = await Proc.start(ns, sys.executable, "-c", _AGENT, node.hex(), group.hex(), str(port))
    await p.line_with("ready")
    return p


async def close_agent(p: Proc) -> None:
    assert p.proc.stdin is not None
    p.proc.stdin.write(b"close\n")
    await p.line_with("closed")
    await p.stop()


def test_discovery_across_processes_in_a_namespace(netns: str) -> None:
    async def main() -> None:
        group, na, nb = os.urandom(16), os.urandom(32), os.urandom(32)
        a = await agent(netns, na, group, 7101)
        b = None
        try:
            t0 = time.monotonic()
            b = await agent(netns, nb, group, 7102)
            await a.line_with("found", nb.hex(), "tcp://127.0.0.1:7102")
            await b.line_with("found", na.hex(), "tcp://127.0.0.1:7101")
            print(f"process start to found, both ways: {1000 * (time.monotonic() - t0):.0f} ms")
            await close_agent(b)
            await a.line_with("lost", nb.hex())
            await close_agent(a)
        finally:
            for p in (a, b):
                if p is not None:
                    await p.stop()

    run(main)


_AVAHI_CONF = """[server]
use-ipv6=no
allow-interfaces=lo
[publish]
publish-hinfo=no
publish-workstation=no
"""


@contextlib.asynccontextmanager
async def avahi(ns: str) -> AsyncIterator[dict[str, str]]:
    """avahi-daemon in `ns`, on a private system bus; yields the env its clients need.

    It needs a D-Bus system bus (avahi-browse talks to the daemon over it): a private
    dbus-daemon on a socket in a temp dir, named by DBUS_SYSTEM_BUS_ADDRESS. And a /run of its
    own (a tmpfs mounted in the mount namespace `ip netns exec` makes), so its pid file does
    not collide with another avahi-daemon. It drops root as usual; --no-chroot spares the
    chroot helper it would fork, which outlives a stopped daemon as a zombie where nothing
    reaps orphans.
    """
    for tool in ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install avahi-daemon avahi-utils)")
    with tempfile.TemporaryDirectory(prefix="zft-avahi-") as tmp:
        os.chmod(tmp, 0o755)  # avahi-daemon, no longer root, must reach the bus socket
        bus = f"{tmp}/bus"
        Path(f"{tmp}/dbus.conf").write_text(DBUS_CONF.format(socket=bus))
        Path(f"{tmp}/avahi.conf").write_text(_AVAHI_CONF)
        env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus}"}
        dbus = await Proc.start(ns, "dbus-daemon", f"--config-file={tmp}/dbus.conf", "--nofork",
                                "--nopidfile", "--print-address")
        daemon = None
        try:
            await dbus.line_with("unix:path=")
            conf = f"{tmp}/avahi.conf"
            run_avahi = f"mount -t tmpfs tmpfs /run && exec avahi-daemon --no-chroot -f {conf}"
            daemon = await Proc.start(ns, "sh", "-c", run_avahi, stderr=True, env=env)
            await daemon.line_with("Server startup complete")
            yield env
        finally:
            for p in (daemon, dbus):
                if p is not None:
                    await p.stop()


def test_avahi_sees_our_service_and_its_goodbye_and_we_see_avahis(netns: str) -> None:
    async def main() -> None:
        group, node = os.urandom(16), os.urandom(32)
        async with avahi(netns) as env:
            browse = await Proc.start(netns, "avahi-browse", "-rp", "_zflood._tcp", env=env)
            us = publish = None
            try:
                us = await agent(netns, node, group, 7201)
                line = await browse.line_with("=", instance_label(node))
                print(line)
                assert "127.0.0.1;7201;" in line and f'"g={group.hex()}"' in line
                assert f'"n={node.hex()}"' in line and '"v=1"' in line
                other = os.urandom(32)
                publish = await Proc.start(
                    netns, "avahi-publish", "-s", "from-avahi", "_zflood._tcp", "7202",
                    "v=1", f"g={group.hex()}", f"n={other.hex()}", env=env,
                )
                await us.line_with("found", other.hex(), ":7202")
                await close_agent(us)
                await browse.line_with("-", instance_label(node))
            finally:
                for p in (publish, us, browse):
                    if p is not None:
                        await p.stop()

    run(main)


# -- a stranger's fake records (issue 8, item 5) ----------------------------------------------


async def announce_fakes(zc: AsyncZeroconf, group: bytes, endpoints: list[tuple[str, int]]) -> None:
    """Unsolicited mDNS responses of 20 records each, as anyone on the LAN can send: each a
    service of our group, with a node id of its own, at `endpoints`."""
    await zc.zeroconf.async_wait_for_start()  # a send before its sockets are up is lost
    now = current_time_millis()
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for i, (address, port) in enumerate(endpoints):
        label = instance_label(os.urandom(32))
        info = ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port,
                           properties={"v": "1", "g": group.hex(), "n": os.urandom(32).hex()},
                           server=f"{label}.local.", parsed_addresses=[address])
        for record in (info.dns_pointer(), info.dns_service(), info.dns_text(),
                       *info.dns_addresses()):
            out.add_answer_at_time(record, now)
        if i % 20 == 19 or i == len(endpoints) - 1:
            zc.zeroconf.async_send(out)
            out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
            # The attacker's pace: 10,000 records a second. Faster, and the receivers' socket
            # buffers (every receiver here shares this loop) drop what they cannot hold.
            await asyncio.sleep(0.002)


class Meshed:
    """A Mesh on 127.0.0.1 wired to a Discovery as the daemon wires them."""

    def __init__(self, group: Group, *, tagged: bool) -> None:
        self.ctx = zmq.asyncio.Context()
        self.key = SigningKey()
        self.links: asyncio.Queue[Link] = asyncio.Queue()
        self.found = 0
        self.enough = asyncio.Event()  # set once 2,000 records reached the mesh
        self.fds_most = 0
        self.mesh = Mesh(self.ctx, self.key, group, listen="tcp://127.0.0.1:0",
                         on_link=self.links.put_nowait)
        self.group = group
        self.tagged = tagged
        self.discovery: Discovery | None = None

    async def start(self) -> None:
        await self.mesh.start()
        self.discovery = Discovery(self.key.public, self.group.id, self.mesh.port,
                                   interfaces=["127.0.0.1"], on_found=self._found,
                                   on_lost=self.mesh.forget,
                                   record_key=record_key(self.group) if self.tagged else None)
        await self.discovery.start()

    def _found(self, node: bytes, endpoint: str) -> None:
        self.mesh.dial(endpoint, node)
        self.found += 1
        if self.found % 100 == 0:
            self.fds_most = max(self.fds_most, len(os.listdir("/proc/self/fd")))
        if self.found >= 2000:
            self.enough.set()

    def records_cached(self) -> int:
        """Services of our type in Zeroconf's cache: what reached us, reported or not."""
        assert self.discovery is not None and self.discovery._zc is not None
        cache = self.discovery._zc.zeroconf.cache
        return len(cache.async_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))

    async def linked_to(self, node: bytes) -> None:
        while (await asyncio.wait_for(self.links.get(), WAIT)).node != node:
            pass

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
        await self.mesh.close()
        self.ctx.term()


@pytest.mark.parametrize("tagged", [True, False], ids=["member-tags", "untagged-records"])
def test_a_member_links_within_two_seconds_while_5000_fake_records_are_announced(
    tagged: bool,
) -> None:
    """Fake records of our group at 4,980 addresses where nothing listens (127.x.y.z:9,
    refused) and at 20 ports that accept and never speak (a tarpit). With member tags (what the
    daemon runs) none is reported and the flood goes on while the member starts; without them
    (records as an older member or avahi-publish makes them) each reaches the mesh, which dials
    a bounded number at once. Either way open files stay bounded and a real member that starts
    then links within two seconds."""
    async def main() -> None:
        group = Group.new()
        holders: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            holders.append(writer)  # accept, then never say a word

        tarpits = [await asyncio.start_server(hold, "127.0.0.1", 0) for _ in range(20)]
        fakes = [("127.0.0.1", t.sockets[0].getsockname()[1]) for t in tarpits]
        fakes += [(f"127.{1 + i // 62500}.{i // 250 % 250}.{1 + i % 250}", 9)
                  for i in range(5000 - len(fakes))]
        victim, member = Meshed(group, tagged=tagged), Meshed(group, tagged=tagged)
        stranger = AsyncZeroconf(interfaces=["127.0.0.1"])
        try:
            fds_before = len(os.listdir("/proc/self/fd"))
            await victim.start()
            t0 = time.monotonic()
            await announce_fakes(stranger, group.id, fakes)
            if not tagged:
                await asyncio.wait_for(victim.enough.wait(), WAIT)
            print(f"\n5,000 fake records sent in {time.monotonic() - t0:.2f} s; "
                  f"{victim.records_cached()} in Zeroconf's cache, {victim.found} reached the mesh")
            assert victim.records_cached() >= 2000
            assert victim.found == 0 if tagged else victim.found >= 2000
            t0 = time.monotonic()
            await member.start()
            flood = asyncio.create_task(announce_fakes(stranger, group.id, fakes if tagged
                                                       else []))
            await asyncio.gather(victim.linked_to(member.key.public),
                                 member.linked_to(victim.key.public))
            took = time.monotonic() - t0
            await flood
            fds = len(os.listdir("/proc/self/fd"))
            stats = victim.mesh.stats()
            print(f"member linked both ways {1000 * took:.0f} ms after its start; open files "
                  f"{fds_before} before, at most {max(victim.fds_most, fds)} during; {stats}")
            assert took < 2.0
            assert stats["sockets"] <= DEFAULT.dial_slots + 1
            assert stats["records_waiting"] + stats["records_on_trial"] <= DEFAULT.max_candidates
            # each DEALER: a socket and its mailbox; and the tarpits' connections, ours
            assert max(victim.fds_most, fds) - fds_before < 6 * DEFAULT.dial_slots + 150
        finally:
            await member.close()
            await victim.close()
            await stranger.async_close()
            for writer in holders:
                writer.close()
            for t in tarpits:
                t.close()
                await t.wait_closed()

    run(main, timeout=60)


def test_records_of_our_group_need_a_member_tag_when_a_record_key_is_set() -> None:
    async def main() -> None:
        group = Group.new()
        key = record_key(group)
        seen: list[Seen] = []
        for tag in (key, os.urandom(32), None):  # a member, a stranger's tags, no tags
            s = Seen(group.id, 7300 + len(seen))
            s.discovery = Discovery(s.node, group.id, s.port, interfaces=["127.0.0.1"],
                                    on_found=s.report, on_lost=s.lost.put_nowait,
                                    record_key=tag)
            seen.append(s)
        a, stranger, untagged = seen
        with LogWatch(f"ignored {instance_label(stranger.node)}", "zflood.discovery") as refused:
            try:
                for s in seen:
                    await s.discovery.start()
                # without a key everything of the group is reported: both records are out
                assert {(await untagged.next_found())[0] for _ in range(2)} == {
                    a.node, stranger.node}
                await asyncio.wait_for(refused.seen.wait(), WAIT)  # only a checks tags
            finally:
                for s in seen:
                    await s.discovery.close()
        assert a.found.empty() and stranger.found.empty()
        assert record_tag(key, a.node, 7300) != record_tag(key, a.node, 7301)

    run(main)
