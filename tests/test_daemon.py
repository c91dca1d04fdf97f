"""Three daemons as real processes on loopback: they find each other through Zeroconf and
converge; a note published with the CLI on one reaches a plain pyzmq SUB on another; the demo
(the README's main job) runs to the end."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq

from zflood.daemon import read_endpoints
from zflood.errors import LocalError
from zflood.local import Client

ZFLOOD = [sys.executable, "-m", "zflood"]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # another process's state: there is no event to await


class Daemon:
    """`zflood run` in its own state directory, on loopback, with mDNS on 127.0.0.1."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [*ZFLOOD, "--state", str(state), "run", "--listen", "tcp://127.0.0.1:0",
             "--interface", "127.0.0.1"],
            stderr=open(state / "log", "wb"),  # noqa: SIM115 (the child keeps it)
        )
        self.started = time.monotonic()
        ends = wait_for(self._endpoints, 20, f"the daemon in {state}")
        self.pub = ends["pub"][0]
        self.client = Client(ends["control"][0], self.pub)

    def _endpoints(self) -> dict[str, Any] | None:
        assert self.proc.poll() is None, (self.state / "log").read_text()
        try:
            ends = read_endpoints(self.state)
        except LocalError:
            return None
        return ends if ends.get("pid") == self.proc.pid else None

    def connected(self) -> int:
        return sum(p["state"] == "connected" for p in self.client.status()["peers"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            assert self.proc.wait(timeout=10) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


def zflood(state: Path, *args: str) -> str:
    out = subprocess.run([*ZFLOOD, "--state", str(state), *args], capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout


@pytest.fixture
def group() -> Iterator[list[Path]]:
    """Three state directories in one group (short paths: ipc socket names are limited)."""
    with tempfile.TemporaryDirectory(prefix="zd") as tmp:
        dirs = [Path(tmp) / name for name in "abc"]
        code = zflood(dirs[0], "init").splitlines()[-1]
        for d in dirs[1:]:
            zflood(d, "join", code)
        yield dirs


def test_three_daemons_find_each_other_over_zeroconf_and_converge(group: list[Path]) -> None:
    daemons = []
    try:
        for d in group:
            daemons.append(Daemon(d))
        for daemon in daemons:
            wait_for(lambda d=daemon: d.connected() == 2, 10, "links to both others")
        linked = time.monotonic() - daemons[-1].started
        print(f"\nthe last daemon started was linked to both others after {linked:.2f} s")
        for i, daemon in enumerate(daemons):
            daemon.client.publish(f"note from {i}")
        wait_for(lambda: all(d.client.status()["notes"] == 3 for d in daemons), 10,
                 "every note everywhere")
        heads = [d.client.status()["heads"] for d in daemons]
        assert heads[0] == heads[1] == heads[2] and len(heads[0]) == 3
        bodies = {n["body"] for n in daemons[0].client.read(0)[0]}
        assert bodies == {"note from 0", "note from 1", "note from 2"}
    finally:
        for daemon in daemons:
            daemon.stop()


def test_cli_publish_reaches_a_plain_sub_socket_on_another_daemon(group: list[Path]) -> None:
    a, b = Daemon(group[0]), Daemon(group[1])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        wait_for(lambda: a.connected() == 1 and b.connected() == 1, 10, "the link")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(b.pub)
        # A SUB's subscription reaches the PUB asynchronously: warm up until one arrives.
        wait_for(lambda: a.client.publish("warm-up") and sub.poll(100), 10, "the subscription")
        while sub.poll(0):
            sub.recv_multipart()
        zflood(group[0], "publish", "hello over the LAN")
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
        a.stop()
        b.stop()


def test_the_demo_runs_to_its_summary() -> None:
    out = subprocess.run([*ZFLOOD, "demo", "--seconds", "60"], capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every daemon holds the same" in out.stdout and out.stdout.rstrip().endswith("True")
