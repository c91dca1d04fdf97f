"""Three daemons as real processes on loopback: they find each other through Zeroconf and
converge; a note published with the CLI on one reaches a plain pyzmq SUB on another; the demo
(the README's main job) runs to the end."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from pathlib import Path

import cbor2
import pytest
import zmq
from daemons import (
    ENV,
    ZFLOOD,
    Daemon,
    Daemons,
    cli_group,
    daemons_fixture,
    run_cli,
    tmp_fixture,
    wait_for,
)

tmp = tmp_fixture("zd")
# With mDNS on 127.0.0.1; each must start within 20 s and exit 0 within 10 s of SIGTERM.
daemons = daemons_fixture(mdns=True, start_timeout=20.0, stop_timeout=10.0)


def connected(daemon: Daemon) -> int:
    """How many of its peers it reports as connected."""
    return sum(p["state"] == "connected" for p in daemon.client.status()["peers"])


def links_to_both(daemon: Daemon) -> bool:
    return connected(daemon) == 2


@pytest.fixture
def group(tmp: Path) -> list[Path]:
    """Three state directories in one group, by `zflood init` and `zflood join`."""
    dirs = [tmp / name for name in "abc"]
    cli_group(dirs)
    return dirs


def test_three_daemons_find_each_other_over_zeroconf_and_converge(
    group: list[Path], daemons: Daemons
) -> None:
    running = [daemons(d) for d in group]
    for daemon in running:
        wait_for(functools.partial(links_to_both, daemon), 10, "links to both others")
    linked = time.monotonic() - running[-1].started
    print(f"\nthe last daemon started was linked to both others after {linked:.2f} s")
    for i, daemon in enumerate(running):
        daemon.client.publish(f"note from {i}")
    # each member's first note is its name, from `zflood init` or `join`
    wait_for(lambda: all(d.client.status()["notes"] == 6 for d in running), 10,
             "every note everywhere")
    heads = [d.client.status()["heads"] for d in running]
    assert heads[0] == heads[1] == heads[2] and len(heads[0]) == 3
    bodies = {n["body"] for n in running[0].client.read(0)[0] if isinstance(n["body"], str)}
    assert bodies == {"note from 0", "note from 1", "note from 2"}


def test_cli_publish_reaches_a_plain_sub_socket_on_another_daemon(
    group: list[Path], daemons: Daemons
) -> None:
    a, b = daemons(group[0]), daemons(group[1])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        wait_for(lambda: connected(a) == 1 and connected(b) == 1, 10, "the link")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(b.pub)
        # A SUB's subscription reaches the PUB asynchronously: warm up until one arrives.
        wait_for(lambda: a.client.publish("warm-up") and sub.poll(100), 10, "the subscription")
        while sub.poll(0):
            sub.recv_multipart()
        run_cli(group[0], "publish", "hello over the LAN")
        assert sub.poll(10_000), "nothing arrived on the other daemon's PUB socket"
        frames = sub.recv_multipart()
        note = cbor2.loads(frames[-1])
        assert note["body"] == "hello over the LAN"
        assert isinstance(note["origin"], bytes) and len(note["origin"]) == 32
        assert isinstance(note["seqno"], int) and isinstance(note["index"], int)
        assert note["origin"].hex() == a.client.status()["node"]
    finally:
        sub.close(linger=0)
        ctx.term()


def test_the_demo_runs_to_its_summary() -> None:
    out = subprocess.run([*ZFLOOD, "demo", "--seconds", "60"], capture_output=True, text=True,
                         timeout=90, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every daemon holds the same" in out.stdout and out.stdout.rstrip().endswith("True")
    for step in ("every daemon is linked to the other two",
                 "every member knows the others by name: a, b, c", "the a-b link is cut",
                 "b has a's 'a, with the a-b link cut'", "the a-b link is healed",
                 "c goes offline", "c publishes offline", "c is linked again"):
        assert step in out.stdout, f"the demo did not tell {step!r}:\n{out.stdout}"
    # every daemon it started is gone (their state directories are named zflood-demo-*)
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"zflood-demo-" in cmdline.read_bytes():
                left.append(cmdline.parent.name)
    assert not left, f"the demo left daemons running: pids {left}"


def test_a_static_peer_whose_name_does_not_resolve_is_logged_once_and_the_rest_link(
    tmp: Path, daemons: Daemons
) -> None:
    """A mistyped --peer host: ZeroMQ would retry it in silence forever. The daemon says so
    once and links to the peers it can reach."""
    a_state, b_state = tmp / "a", tmp / "b"
    cli_group([a_state, b_state])
    a = daemons(a_state, mdns=False)
    b = daemons(b_state, "tcp://no-such-host.invalid:4000", a.listen, mdns=False)
    wait_for(lambda: b.node in a.linked() and a.node in b.linked(), 15, "B to link to A")
    line = "peer tcp://no-such-host.invalid:4000: cannot resolve no-such-host.invalid"
    wait_for(lambda: line in b.log.read_text(), 15, "the warning about the bad name")
    log = b.log.read_text()
    assert log.count(line) == 1 and "Traceback" not in log
