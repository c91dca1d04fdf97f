"""`zflood demo`: three real daemons on this machine, told as it happens.

Each daemon is a `zflood run` process with its own state directory, listening on loopback and
finding the others through Zeroconf. Notes are published and arrive. The a-b link is cut (a
asks its daemon to drop it): a's next note still reaches b, relayed by c; the link heals. Then c
goes offline (as a laptop does), a and b go on publishing and c publishes into its outbox while
offline; c comes back, is found again and catches up both ways. It ends by itself with a
summary, and stops every process it started.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LocalError
from .local import Client
from .statedir import endpoints_of

NAMES = "abc"

#: How the demo starts `zflood`. `-P`: not with the working directory first on sys.path. Run
#: from the folder holding a checkout named `zflood`, `python -m zflood` would find that
#: folder first and import it as an empty namespace package: setuptools' editable installs
#: put their finder after the normal path search, so it is never asked.
ZFLOOD = [sys.executable, "-P", "-m", "zflood"]


class Member:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.state = root / name
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def zflood(self, *args: str) -> str:
        out = subprocess.run(
            [*ZFLOOD, "--state", str(self.state), *args],
            capture_output=True, text=True, timeout=30,
        )
        if out.returncode:
            raise LocalError(f"zflood {args[0]} failed: {out.stderr.strip()}")
        return out.stdout

    def start(self, deadline: float) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*ZFLOOD, "--state", str(self.state), "run",
                 "--listen", "tcp://127.0.0.1:0", "--interface", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        endpoints = wait(lambda: self._endpoints(), deadline, f"{self.name} to start")
        self.client = Client(endpoints["control"][0], endpoints["pub"][0])

    def _endpoints(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise LocalError(f"daemon {self.name} exited; its log: {self.log}")
        return endpoints_of(self.state, self.proc.pid)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def connected(self) -> int:
        return sum(p["state"] == "connected" for p in self.client.status()["peers"])

    def names(self) -> set[str]:
        return {m["name"] for m in self.client.status()["members"] if m["name"]}

    def count(self) -> int:
        return int(self.client.status()["notes"])


def wait(check: Callable[[], Any], deadline: float, what: str) -> Any:
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise LocalError(f"gave up waiting for {what}")
        time.sleep(0.002)  # polling another process's state: there is no event to await


def demo(seconds: float = 60.0) -> int:
    start = time.monotonic()
    deadline = start + seconds

    def say(text: str) -> None:
        print(f"{time.monotonic() - start:7.2f} s  {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="zflood-demo-") as tmp:
        members = {name: Member(name, Path(tmp)) for name in NAMES}
        a, b, c = members.values()
        try:
            code = a.zflood("init", "--name", a.name).splitlines()[-1]
            say(f"a started a group; join code {code[:16]}...")
            for m in (b, c):
                m.zflood("join", code, "--name", m.name)
            say("b and c joined with the code; each member's first note is its name")
            for m in members.values():
                m.start(deadline)
            say("three daemons running on loopback; finding each other over Zeroconf")
            for m in members.values():
                wait(lambda m=m: m.connected() == 2, deadline, f"{m.name}'s links")  # type: ignore[misc]
            say("every daemon is linked to the other two (CurveZMQ)")
            for m in members.values():
                wait(lambda m=m: m.names() == set(NAMES), deadline, f"{m.name}'s names")  # type: ignore[misc]
            say(f"every member knows the others by name: {', '.join(sorted(a.names()))}")

            def spread(author: Member, text: str, readers: list[Member]) -> None:
                before = {m.name: m.count() for m in readers}
                t0 = time.monotonic()
                author.client.publish(text)
                for m in readers:
                    wait(lambda m=m: m.count() > before[m.name], deadline, f"{text!r} at {m.name}")  # type: ignore[misc]
                    say(f"{m.name} has {author.name}'s {text!r} "
                        f"({(time.monotonic() - t0) * 1000:.1f} ms after publishing)")

            spread(a, "hello from a", [b, c])
            spread(b, "and from b", [a, c])
            b_id = b.client.status()["node"]
            a.client.cut(b_id)
            wait(lambda: a.connected() == 1 and b.connected() == 1, deadline, "the a-b cut")
            say("the a-b link is cut (a drops it); a and b are both still linked to c")
            spread(a, "a, with the a-b link cut", [b])
            say("  (it went a -> c -> b)")
            a.client.heal(b_id)
            wait(lambda: a.connected() == 2 and b.connected() == 2, deadline, "the a-b link")
            say("the a-b link is healed: a full mesh again")
            say("c goes offline (its daemon stops: mDNS goodbye, links closed)")
            c.stop()
            wait(lambda: a.connected() == 1 and b.connected() == 1, deadline, "c's links to close")
            spread(a, "a, while c is away", [b])
            out = c.zflood("publish", "c, written offline")
            say(f"c publishes offline into its outbox: {out.strip()}")
            total = a.count() + 1  # all of a's and b's, and c's note from its outbox
            say("c comes back")
            c.start(deadline)
            wait(lambda: c.connected() == 2, deadline, "c to be linked again")
            say("c is linked again; catching up both ways")
            for m in members.values():
                wait(lambda m=m: m.count() == total, deadline, f"{m.name} to catch up")  # type: ignore[misc]
            heads = [m.client.status()["heads"] for m in members.values()]
            same = heads[0] == heads[1] == heads[2]
            say(f"done: every daemon holds the same {total} notes: {same}")
            return 0 if same else 1
        except LocalError as e:
            print(f"zflood demo: {e}", file=sys.stderr)
            for m in members.values():
                if m.log.exists():
                    tail = m.log.read_text().splitlines()[-5:]
                    print(f"--- {m.name}'s log, last lines:", *tail, sep="\n", file=sys.stderr)
            return 1
        finally:
            for m in members.values():
                m.stop()
