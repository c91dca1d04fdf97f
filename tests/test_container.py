"""systemd/zflood@.service under a real systemd: a Debian 12 tree (built once by
tools/container.sh) booted with systemd-nspawn, zflood installed into /opt/zflood from this
checkout as the README says, and two instances side by side.

What is checked: READY for both, each on a port of its own that a restart keeps; a member of
the `zflood` group (from the shipped sysusers.d file) reaches an instance's control and PUB
sockets through `zflood --instance`, another user is refused; a join code with a typo in the
credential exits 78 and is not restarted; log lines reach the journal at their priority, and a
port in use (an error, priority 3) is retried by systemd until it is free.

The container boots with --volatile=overlay (the cached tree is never written: all changes go
to a tmpfs thrown away at exit) and --private-network (only its own loopback: nothing it does
reaches the host's network). Commands run inside it through nsenter. It is stopped by the PID
of systemd-nspawn (SIGTERM powers it off), killed past a deadline. Skipped, with the reason,
where the machine lacks root, systemd-nspawn or the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREE = Path(os.environ.get("ZFLOOD_CONTAINER", "/var/cache/zflood-container/bookworm"))
WHEELS = TREE.parent / "wheels"
BOOT = 60.0  # bound on booting the container to a running system
STOP = 30.0  # bound on its poweroff
COMMAND = 120.0  # bound on any one command inside (the install is the longest, ~10 s)
SETTLE = 30.0  # bound on systemd acting on a unit (a restart takes RestartSec=5s)
POLL = 0.1  # systemd's state of a unit offers the test no event to await: poll it
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.timeout(300)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd-container util-linux)"
    if not (TREE / ".zflood-tree").exists() or not WHEELS.is_dir():
        return f"no container tree at {TREE}: build it once with tools/container.sh"
    return None


class Container:
    """A booted container; `sh` runs a command inside it (as root or as a user)."""

    def __init__(self, work: Path) -> None:
        self.log = work / "nspawn.log"
        src = work / "src"
        # the checkout as a clean copy: pip builds in the source tree, and the tree's venv,
        # caches and VCS data are no part of the install
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", ".mypy_cache",
            ".ruff_cache", ".pytest_cache", ".hypothesis", "*.pyc"))
        argv = ["systemd-nspawn", "--quiet", "-D", str(TREE), "--volatile=overlay", "-b",
                "--keep-unit", "--register=no", "--private-network",
                f"--machine=zflood-test-{os.getpid()}",
                f"--bind={src}:/src", f"--bind-ro={WHEELS}:/wheels"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.leader = 0
        try:
            self.leader = self._wait_leader()
            # systemctl needs the manager's socket, which appears as it starts its units
            bus = Path(f"/proc/{self.leader}/root/run/systemd/private")
            deadline = time.monotonic() + BOOT
            while not bus.exists():
                assert time.monotonic() < deadline, f"no {bus} after {BOOT} s"
                time.sleep(POLL)
            state = self.sh("systemctl is-system-running --wait", check=False,
                            timeout=BOOT).out.strip()
            assert state in ("running", "degraded"), f"container boot: {state}"
        except BaseException:
            self.stop()
            raise

    def _wait_leader(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + BOOT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: "
                                     f"{self.log.read_text(errors='replace')[-2000:]}")
            with _suppress_missing():
                pids = children.read_text().split()
                if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                    return int(pids[0])
            time.sleep(POLL)
        raise AssertionError(f"the container's systemd did not start in {BOOT} s")

    def sh(self, script: str, *, user: str | None = None, check: bool = True,
           timeout: float = COMMAND, stdin: str = "") -> Done:
        """`sh -c SCRIPT` inside, in a clean environment, as root or `user`."""
        who = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                       "--init-groups"]
        home = "/root" if user is None else f"/home/{user}"
        argv = ["nsenter", f"--target={self.leader}", "--all", "--", "env", "-i", f"PATH={PATH}",
                f"HOME={home}", "LANG=C.UTF-8", *who, "sh", "-c", script]
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                           timeout=timeout, check=False)
        done = Done(p.returncode, p.stdout, p.stderr)
        if check:
            assert p.returncode == 0, f"{script!r} as {user or 'root'}: exit {p.returncode}\n" \
                                      f"{p.stdout}{p.stderr}"
        return done

    def unit(self, name: str) -> dict[str, str]:
        out = self.sh(f"systemctl show --no-pager -p ActiveState,SubState,Result,NRestarts,"
                      f"ExecMainStatus,StatusText,MainPID {name}").out
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_unit(self, name: str, what: str, **want: str) -> dict[str, str]:
        deadline = time.monotonic() + SETTLE
        while True:
            props = self.unit(name)
            if all(props.get(k) == v for k, v in want.items()):
                return props
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never {what} in {SETTLE} s: {props}\n"
                                     f"{self.journal(name)}")
            time.sleep(POLL)

    def journal(self, unit: str) -> list[tuple[int, str]]:
        """(priority, message) of every journal entry of `unit`'s processes."""
        out = self.sh(f"journalctl --no-pager -o json _SYSTEMD_UNIT={unit}", check=False).out
        entries = []
        for line in out.splitlines():
            entry: dict[str, Any] = json.loads(line)
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # journald's form of a message that is not UTF-8
                message = bytes(message).decode(errors="replace")
            entries.append((int(entry.get("PRIORITY", 6)), str(message)))
        return entries

    def status(self, instance: str, user: str | None = None) -> dict[str, Any]:
        out = self.sh(f"zflood --instance {instance} status --json", user=user).out
        data: dict[str, Any] = json.loads(out)
        return data

    def stop(self) -> None:
        """Power off: SIGTERM to systemd-nspawn (it asks the container's systemd to halt),
        bounded; past that, SIGKILL to the container's init and to systemd-nspawn."""
        deadline = time.monotonic() + STOP
        # nspawn forwards SIGTERM as SIGRTMIN+3, which an init still booting may not handle
        # yet (PID 1 ignores a signal it has no handler for): ask again until it goes
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2.0)
        if self.proc.poll() is None:
            if self.leader:
                with _suppress_missing():
                    os.kill(self.leader, signal.SIGKILL)  # ends its whole PID namespace
            self.proc.kill()
            self.proc.wait(timeout=STOP)
            raise AssertionError(f"the container did not power off in {STOP} s")


class Done:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


class _suppress_missing:
    """A process that is gone, or never was: nothing to do."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, (FileNotFoundError, ProcessLookupError))


INSTALL = """
set -e
# the README's install, from the checkout, with the wheels instead of the network
python3 -m venv /opt/zflood
/opt/zflood/bin/pip install -q --no-index --find-links /wheels '/src[fast]'
ln -sf /opt/zflood/bin/zflood /usr/local/bin/zflood
cp /src/systemd/zflood@.service /etc/systemd/system/
install -D -m 0644 /src/systemd/zflood.sysusers /etc/sysusers.d/zflood.conf
systemd-sysusers
install -d -m 0700 /etc/zflood
useradd -m alice && usermod -aG zflood alice
useradd -m bob
umask 077
zflood --state /root/family init | tail -n 1 > /etc/zflood/family.join
zflood --state /root/work init | tail -n 1 > /etc/zflood/work.join
systemctl daemon-reload
"""


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="zflood-nspawn-") as work:
        c = Container(Path(work))
        try:
            r = c.sh(INSTALL, check=False)
            assert r.code == 0, f"install inside the container: exit {r.code} (a dependency " \
                f"missing from {WHEELS}? tools/container.sh refreshes them)\n{r.out}{r.err}"
            yield c
        finally:
            c.stop()


def test_two_instances_start_ready_each_on_a_port_it_keeps_across_restarts(
    box: Container,
) -> None:
    box.sh("systemctl start zflood@family zflood@work")  # Type=notify: returns on READY=1
    for name in ("zflood@family", "zflood@work"):
        props = box.unit(name)
        assert (props["ActiveState"], props["SubState"], props["StatusText"]) == (
            "active", "running", "serving"), props
    ports = {i: box.status(i)["listen"] for i in ("family", "work")}
    assert ports["family"] != ports["work"], ports
    assert all(p.startswith("tcp://0.0.0.0:") for p in ports.values()), ports
    for i, listen in ports.items():  # kept where systemd keeps the instance's state
        assert box.sh(f"cat /var/lib/zflood/{i}/port").out.strip() == listen.rpartition(":")[2]
    box.sh("systemctl restart zflood@family zflood@work")
    assert {i: box.status(i)["listen"] for i in ports} == ports


def test_the_zflood_group_reaches_the_sockets_and_other_users_are_refused(
    box: Container,
) -> None:
    box.sh("systemctl start zflood@family")
    assert box.sh("stat -c '%a %G' /run/zflood/family /run/zflood/family/control.sock "
                  "/run/zflood/family/pub.sock").out.split("\n")[:3] == [
        "750 zflood", "660 zflood", "660 zflood"]
    # alice, in the zflood group: status, publish (to the daemon, not offline), and the PUB
    # socket carries what is published
    assert box.status("family", user="alice")["running"] is True
    human = box.sh("zflood --instance family status", user="alice").out
    assert "listening on tcp://0.0.0.0:" in human, human
    out = box.sh("zflood --instance family publish 'from alice'", user="alice").out
    assert out.startswith("published #") and "offline" not in out, out
    got = box.sh(SUBSCRIBE, user="alice").out
    assert got.strip() == "heard: live from alice", got
    got = box.sh(TAIL, user="alice").out
    assert got.endswith(" from alice\n"), got
    # bob is not: one clear line, exit 1, and the sockets stay closed to him
    r = box.sh("zflood --instance family status", user="bob", check=False)
    assert r.code == 1 and r.err.startswith("zflood: zflood@family runs, but only root and "
                                            "members of the group zflood"), (r.code, r.err)
    r = box.sh(SUBSCRIBE, user="bob", check=False)
    assert r.code != 0 and "heard" not in r.out, (r.code, r.out, r.err)
    assert box.status("family")["notes"] >= 1  # root


# A SUB on the instance's PUB socket, a publish through its control socket until the SUB
# hears it (a SUB misses what is sent before its subscription is in place), bounded.
SUBSCRIBE = """/opt/zflood/bin/python - <<'EOF'
import time, zmq, cbor2
from zflood import Client
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect("ipc:///run/zflood/family/pub.sock")
sub.subscribe(b"")
client = Client("ipc:///run/zflood/family/control.sock", timeout=2.0)
deadline = time.monotonic() + 30  # a loaded machine starts Python slowly
while time.monotonic() < deadline:
    client.publish("live from alice")
    if sub.poll(200):
        note = cbor2.loads(sub.recv_multipart()[-1])
        print("heard:", note["body"])
        break
client.close()
sub.close(0)
ctx.term()
EOF
"""


# `zflood --instance family tail --all` until it prints alice's note (the member's name notes
# come first), bounded, then stopped by PID.
TAIL = """/opt/zflood/bin/python - <<'EOF'
import select, subprocess, time
# unbuffered: a buffered readline may take two lines from the pipe, and select() would then
# wait for a second one that is already read
p = subprocess.Popen(["zflood", "--instance", "family", "tail", "--all"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
deadline = time.monotonic() + 30  # a loaded machine starts Python slowly
try:
    while select.select([p.stdout], [], [], max(0, deadline - time.monotonic()))[0]:
        line = p.stdout.readline().decode()
        if not line or "from alice" in line:
            print(line, end="")
            break
finally:
    p.terminate()
    p.wait(5)
EOF
"""


def test_a_join_code_with_a_typo_in_the_credential_exits_78_without_restarts(
    box: Container,
) -> None:
    code = box.sh("cat /etc/zflood/family.join").out.strip()
    typo = code[:-3] + ("a" if code[-3] != "a" else "b") + code[-2:]
    box.sh("umask 077 && cat > /etc/zflood/typo.join", stdin=typo + "\n")
    r = box.sh("systemctl start zflood@typo", check=False)
    assert r.code != 0
    props = box.unit("zflood@typo")
    # failed, not "activating (auto-restart)": RestartPreventExitStatus=78 holds
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"],
            props["NRestarts"]) == ("failed", "exit-code", "78", "0"), props
    errors = [m for prio, m in box.journal("zflood@typo.service") if prio == 3]
    assert any(m.startswith("zflood: bad join code in the credential "
                            "(/etc/zflood/typo.join)") for m in errors), errors


def test_log_lines_reach_the_journal_at_their_priority_and_a_taken_port_is_retried(
    box: Container,
) -> None:
    """The kept port held by something else: an error line (priority 3) and exit 1, so
    systemd restarts it; once the port is free it serves again on that same port."""
    box.sh("systemctl start zflood@family")
    port = int(box.status("family")["listen"].rpartition(":")[2])
    box.sh("systemctl stop zflood@family")
    holder = (f"/opt/zflood/bin/python -c 'import socket, time; s = socket.socket(); "
              f"s.bind((\"0.0.0.0\", {port})); s.listen(); time.sleep(300)'")
    box.sh(f"systemd-run --quiet --unit=holder --property=Type=exec {holder}")
    try:
        box.sh("systemctl start zflood@family", check=False)
        box.wait_unit("zflood@family", "failed to listen",
                      ActiveState="activating", SubState="auto-restart")
    finally:
        box.sh("systemctl stop holder")
    props = box.wait_unit("zflood@family", "came back", ActiveState="active",
                          SubState="running")
    assert int(props["NRestarts"]) >= 1, props
    assert box.status("family")["listen"] == f"tcp://0.0.0.0:{port}"
    entries = box.journal("zflood@family.service")
    busy = [p for p, m in entries if f"cannot listen on tcp://0.0.0.0:{port}" in m]
    assert busy and set(busy) == {3}, entries
    serving = [p for p, m in entries if "listening on" in m]
    assert serving and set(serving) == {6}, entries
