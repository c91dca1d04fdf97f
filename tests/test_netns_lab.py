"""The namespace lab itself: hosts reach each other, multicast floods, partitions cut and heal,
Avahi works inside it, and nothing of it outlives the `with` block.

Traffic is made by small Python programs run in the hosts (ping may not be installed). Every
wait is bounded: the programs carry their own deadlines and the test awaits their output lines.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
from netns import Lab, LabError, Lines, Resolved, lab_fixture, parse_resolved, sweep_stale

lab3 = lab_fixture(3)

# Echoes every datagram back; prints "ready" once bound, so the test need not guess.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""

# Sends to ADDR:PORT until the echo comes back or DEADLINE seconds pass; exit 0 on echo. The
# resend covers the first datagram waiting on ARP; the deadline bounds the whole exchange.
UDP_PROBE = """
import os, socket, sys, time
addr, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
token = os.urandom(8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while time.monotonic() < deadline:
    s.sendto(token, (addr, port))
    s.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
    try:
        while s.recv(2048) != token:
            pass
    except OSError:  # timeout, or no carrier on a cut link
        continue
    sys.exit(0)
sys.exit(1)
"""

# Joins GROUP on the interface holding MYADDR, prints "ready", then prints each datagram.
MCAST_RECEIVE = """
import socket, struct, sys
group, port, myaddr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(myaddr))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print("got", data.decode(), peer[0], flush=True)
"""

# Sends PAYLOAD to GROUP:PORT from MYADDR's interface, COUNT times, 50 ms apart: repeated so
# the test waits for an arrival rather than betting on a single datagram's timing.
MCAST_SEND = """
import socket, sys, time
group, port, myaddr, payload, count = sys.argv[1:6]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(myaddr))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(int(count)):
    try:
        s.sendto(payload.encode(), (group, int(port)))
    except OSError:  # no carrier on a cut link
        pass
    time.sleep(0.05)
"""

GROUP = "224.0.0.251"  # mDNS's own group; the random port keeps us out of anyone's way


def _port() -> int:
    return random.randrange(20000, 60000)


def _py(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", code, *map(str, args)]


def start_echo(lab: Lab, i: int, port: int) -> subprocess.Popen[str]:
    proc = lab.run(i, _py(UDP_ECHO, lab.hosts[i].addr, port), stdout=subprocess.PIPE, text=True)
    lab.watch(proc.stdout).wait_for("^ready$", 10)
    return proc


def reaches(lab: Lab, src: int, dst: int, port: int, within: float = 3.0) -> bool:
    """Whether host src gets an echo from host dst's echo server within `within` seconds."""
    done = lab.call(
        src, _py(UDP_PROBE, lab.hosts[dst].addr, port, within), timeout=within + 10, check=False
    )
    return done.returncode == 0


def start_receivers(lab: Lab, hosts: list[int], port: int) -> dict[int, Lines]:
    watches = {}
    for i in hosts:
        proc = lab.run(
            i,
            _py(MCAST_RECEIVE, GROUP, port, lab.hosts[i].addr),
            stdout=subprocess.PIPE,
            text=True,
        )
        watches[i] = lab.watch(proc.stdout)
        watches[i].wait_for("^ready$", 10)
    return watches


def test_every_host_reaches_every_other_by_unicast(lab3: Lab) -> None:
    port = _port()
    for i in range(3):
        start_echo(lab3, i, port)
    for src in range(3):
        for dst in range(3):
            if src != dst:
                assert reaches(lab3, src, dst, port), f"host {src} cannot reach host {dst}"


def test_hosts_have_only_the_lab_routes(lab3: Lab) -> None:
    routes = lab3.call(0, ["ip", "-4", "route", "show"]).stdout.splitlines()
    dests = sorted(line.split()[0] for line in routes)
    assert dests == ["10.77.0.0/24", "224.0.0.0/4"], routes
    # An address outside the lab is unreachable at once: there is no route to try.
    done = lab3.call(
        0, _py("import socket; socket.socket(2, 2).connect(('192.0.2.1', 9))"), check=False
    )
    assert done.returncode != 0 and "unreachable" in done.stderr


def test_ipv6_link_local_addresses_are_usable_at_once(lab3: Lab) -> None:
    # No duplicate address detection on the lab's wire: nothing waits "tentative".
    for i in range(3):
        addrs = lab3.call(i, ["ip", "-6", "addr", "show", "dev", lab3.hosts[i].ifname]).stdout
        assert "fe80::" in addrs and "tentative" not in addrs, addrs


def test_multicast_from_one_host_reaches_all_others(lab3: Lab) -> None:
    port = _port()
    receivers = start_receivers(lab3, [1, 2], port)
    lab3.run(0, _py(MCAST_SEND, GROUP, port, lab3.hosts[0].addr, "hello", 100))
    for i, watch in receivers.items():
        line = watch.wait_for("^got ", 10)
        assert line == f"got hello {lab3.hosts[0].addr}", f"host {i}: {line}"


def test_a_cut_link_stops_traffic_and_restoring_it_heals(lab3: Lab) -> None:
    port = _port()
    for i in range(3):
        start_echo(lab3, i, port)
    assert reaches(lab3, 0, 2, port)

    lab3.set_link(2, up=False)
    assert not lab3.link_is_up(2)
    assert not reaches(lab3, 0, 2, port, within=1.0)
    assert not reaches(lab3, 2, 0, port, within=1.0)
    assert reaches(lab3, 0, 1, port), "cutting host 2 must not cut the others"

    # Multicast: host 1 hears host 0 while host 2, cut off, hears nothing.
    mport = _port()
    receivers = start_receivers(lab3, [1, 2], mport)
    sender = lab3.run(0, _py(MCAST_SEND, GROUP, mport, lab3.hosts[0].addr, "cut", 10))
    receivers[1].wait_for("^got cut ", 10)
    assert sender.wait(10) == 0  # every datagram has left host 0 and crossed the bridge
    with pytest.raises(LabError):
        receivers[2].wait_for("^got ", 0.5)

    lab3.set_link(2, up=True)
    assert lab3.link_is_up(2)
    assert reaches(lab3, 0, 2, port)
    assert reaches(lab3, 2, 1, port)
    lab3.run(0, _py(MCAST_SEND, GROUP, mport, lab3.hosts[0].addr, "healed", 100))
    receivers[2].wait_for("^got healed ", 10)


def _root_links() -> set[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _skip_unless_available() -> None:
    ok, why = Lab.available()
    if not ok:
        pytest.skip(why)


def test_nothing_of_the_lab_remains_after_the_with_block() -> None:
    _skip_unless_available()
    links_before = _root_links()
    with Lab(2) as lab:
        names = lab.namespaces()
        listed = _netns_list()
        assert all(n in listed for n in names)
        # Nothing was made in the root namespace.
        assert _root_links() == links_before
        sleeper = lab.run(0, ["sleep", "300"])
        # A daemon that left the process group it was started in is found in its namespace.
        forker = lab.run(
            1,
            _py(
                "import os, subprocess; p = subprocess.Popen(['sleep', '300'], "
                "start_new_session=True); print(p.pid, flush=True)"
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        escaped = int(lab.watch(forker.stdout).wait_for(r"^\d+$", 10))
    listed = _netns_list()
    assert not any(n in listed for n in names), listed
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert _root_links() == links_before
    assert sleeper.poll() is not None
    assert _gone(escaped)


def test_teardown_runs_when_the_test_body_fails() -> None:
    _skip_unless_available()
    with pytest.raises(RuntimeError, match="the test failed"), Lab(2) as lab:
        names = lab.namespaces()
        sleeper = lab.run(1, ["sleep", "300"])
        raise RuntimeError("the test failed")
    listed = _netns_list()
    assert not any(n in listed for n in names), listed
    assert sleeper.poll() is not None


def test_a_lab_left_by_a_dead_process_is_swept() -> None:
    _skip_unless_available()
    dead = subprocess.Popen(["true"])
    dead.wait(10)
    stale = f"zfl-{dead.pid}-abcd-hub"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        assert stale in sweep_stale()
        assert stale not in _netns_list()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10)


def test_avahi_in_one_host_browses_a_service_published_in_another(lab3: Lab) -> None:
    ok, why = Lab.avahi_available()
    if not ok:
        pytest.skip(why)
    lab3.start_avahi(0)
    lab3.start_avahi(1)
    name = f"zflood test {os.getpid()}"  # a space: the browse output escapes it
    publisher = lab3.avahi_publish(0, name, "_zfloodtest._tcp", 1234, ["k=v"])

    def published(found: list[Resolved]) -> bool:
        return any(s.name == name for s in found)

    t0 = time.monotonic()
    found = lab3.wait_browse(1, "_zfloodtest._tcp", published)
    service = next(s for s in found if s.name == name)
    assert (service.address, service.port, service.hostname) == ("10.77.0.1", 1234, "zfl-h0.local")
    assert service.txt == ("k=v",)
    assert time.monotonic() - t0 < 15

    # Withdrawing it sends a goodbye; the other host forgets it without waiting for a TTL.
    lab3.stop(publisher)
    lab3.wait_browse(1, "_zfloodtest._tcp", lambda found: not published(found))

    # The raw text is the plain `avahi-browse -rpt` format other tools parse.
    lab3.avahi_publish(0, "again", "_zfloodtest._tcp", 4321)
    lab3.wait_browse(1, "_zfloodtest._tcp", lambda found: len(found) == 1)
    assert "=;veth0;IPv4;again;_zfloodtest._tcp;local;zfl-h0.local;10.77.0.1;4321;" in (
        lab3.avahi_browse(1, "_zfloodtest._tcp")
    )
    assert parse_resolved("") == []
