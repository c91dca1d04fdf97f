"""Helpers for tests that run `zflood` as real processes: the command and a clean environment
for it, a bounded poll, short state directories, group members made in-process, and `Daemon`,
a `zflood run` found through its endpoints.json and stopped by PID under a deadline.

Test modules import it as a sibling (`from daemons import Daemon, wait_for`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from zflood.identity import Group
from zflood.local import Client
from zflood.statedir import endpoints_of, open_node, save_group

ZFLOOD = [sys.executable, "-m", "zflood"]
WAIT = 10.0  # bound on anything a daemon does on loopback (it takes well under a second)
STOP_TIMEOUT = 5.0  # bound on a daemon's exit after a signal
POLL = 0.01  # another process's state offers no event to await: poll it this often
CLI_TIMEOUT = 30.0  # bound on a CLI command run to completion by `run_cli`

# The state directory and sockets must come from --state alone, whatever the caller's
# environment says (systemd variables would move the sockets, or join on start).
_UNSET = ("ZFLOOD_STATE", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY",
          "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
#: The environment for every zflood process the tests start.
ENV = {k: v for k, v in os.environ.items() if k not in _UNSET}

Map = dict[str, Any]
Held = set[tuple[str, int, Any]]  # (origin hex, seqno, body)
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             detail: Callable[[], str] | None = None) -> T:
    """Poll `check` every POLL seconds until it returns something truthy, and return that;
    past `timeout` fail, naming `what` (and adding `detail()`, such as logs, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{more}")
        time.sleep(POLL)  # another process's state: there is no event to await


@contextlib.contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    """A new directory under /tmp, removed afterwards. ipc:// socket paths (in a state
    directory) must stay under ~107 bytes, which pytest's tmp_path can exceed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        yield Path(path)


def tmp_fixture(prefix: str) -> Any:
    """A pytest fixture giving a `short_dir`: `tmp = tmp_fixture("zc")` at a test module's
    top level, then `def test_x(tmp): ...`."""

    @pytest.fixture
    def tmp() -> Iterator[Path]:
        with short_dir(prefix) as path:
            yield path

    return tmp


def member(state: Path, code: str | None = None) -> str:
    """A member in `state`: of a new group (like `zflood init`), or of `code`'s (like
    `zflood join CODE`); returns the join code. In-process: a subprocess costs ~0.2 s."""
    group = Group.new() if code is None else Group.from_join_code(code)
    save_group(state, group)
    open_node(state, group, create=True).close()
    return group.join_code


def run_cli(state: Path, *args: str) -> str:
    """`zflood --state STATE ARGS` to completion (bounded); its stdout. Fails the test on a
    non-zero exit, with its stderr."""
    done = subprocess.run([*ZFLOOD, "--state", str(state), *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, env=ENV, check=False)
    assert done.returncode == 0, f"zflood {' '.join(args)}: {done.stderr}"
    return done.stdout


def cli_group(states: Sequence[Path]) -> str:
    """`zflood init` in the first state directory, `zflood join` in the others; the code."""
    code = run_cli(states[0], "init").splitlines()[-1]
    for state in states[1:]:
        run_cli(state, "join", code)
    return code


def log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a daemon's log."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def own_endpoints(state: Path, proc: subprocess.Popen[Any], log: Path) -> Map | None:
    """`state`'s endpoints.json if `proc` wrote it, else None; fails if `proc` has exited.
    A killed daemon leaves its file behind: only the one naming this pid counts."""
    if proc.poll() is not None:
        raise AssertionError(f"the daemon in {state} exited {proc.returncode}: "
                             f"{log_tail(log)}")
    return endpoints_of(state, proc.pid)


def linked_nodes(client: Client) -> set[str]:
    """Node ids (hex) of the peers a daemon has a working link to."""
    return {p["node"] for p in client.status()["peers"] if p["state"] == "connected"}


def all_notes(client: Client) -> list[Map]:
    """Every note a daemon holds, read through its control socket page by page."""
    notes: list[Map] = []
    start = 0
    while True:
        batch, start = client.read(start)
        if not batch:
            return notes
        notes += batch


class Daemon:
    """`zflood run` in `state` as a subprocess, listening on `listen` (None: the default, the
    member's own port) and dialling `peers`, with `extra` options and `env` added to ENV;
    without mDNS, or with `mdns` on 127.0.0.1 only. It is found through the
    endpoints.json naming its pid; the constructor returns once its control socket answers.
    Its stderr goes to `log`, beside the state directory. `stop` and `kill` end it by pid,
    bounded; use `Daemons` so that every one is ended, pass or fail."""

    def __init__(self, state: Path, *peers: str, mdns: bool = False,
                 listen: str | None = "tcp://127.0.0.1:0", extra: Sequence[str] = (),
                 env: dict[str, str] | None = None, start_timeout: float = WAIT,
                 stop_timeout: float = STOP_TIMEOUT) -> None:
        self.state = state
        self.log = state.parent / f"{state.name}.log"
        self.stop_timeout = stop_timeout
        argv = [*ZFLOOD, "--state", str(state), "run",
                *(["--listen", listen] if listen is not None else []), *extra,
                *(["--interface", "127.0.0.1"] if mdns else ["--no-discovery"])]
        for peer in peers:
            argv += ["--peer", peer]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         env={**ENV, **(env or {})})
        self.started = time.monotonic()
        try:
            ends = wait_for(lambda: own_endpoints(state, self.proc, self.log), start_timeout,
                            f"the daemon in {state} to start")
            self.listen: str = ends["listen"]
            self.port = int(self.listen.rpartition(":")[2])
            self.pub: str = ends["pub"][0]
            self.client = Client(ends["control"][0], self.pub)
            try:
                status = self.client.status()
            except BaseException:
                self.client.close()
                raise
        except BaseException:
            self._end(self.proc.kill, "SIGKILL")  # never usable: no client to close
            raise
        self.node: str = status["node"]
        self.group: str = status["group"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def linked(self) -> set[str]:
        return linked_nodes(self.client)

    def held(self) -> Held:
        """(origin hex, seqno, body) of every note it holds."""
        return {(n["origin"].hex(), n["seqno"], n["body"]) for n in all_notes(self.client)}

    def has(self, body: str) -> bool:
        return any(b == body for _, _, b in self.held())

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Signal it by pid and wait (`stop_timeout` unless `timeout`); its exit code. One
        still running past that is killed, and this fails."""
        self.client.close()
        return self._end(lambda: self.proc.send_signal(sig), f"signal {sig}",
                         self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """kill -9 by pid, and reap it (a zombie's pid would still look alive to the CLI)."""
        self.client.close()
        self._end(self.proc.kill, "SIGKILL")

    def _end(self, send: Callable[[], None], what: str, timeout: float = STOP_TIMEOUT) -> int:
        """`send` (unless it has exited) and wait for its exit code; past `timeout` kill it and
        fail."""
        if self.proc.poll() is None:
            send()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError(f"the daemon in {self.state} ignored {what} for {timeout} s"
                                 ) from None


class Daemons:
    """Starts `Daemon`s (`daemons(state, *peers)`, with `defaults` for Daemon's keywords).
    On leaving, each one still running is stopped by pid with SIGTERM, and fails the test
    unless it exits 0 in time; one the test has stopped or killed is left as it is."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.started: list[Daemon] = []

    def __call__(self, state: Path, *peers: str, **kw: Any) -> Daemon:
        self.started.append(Daemon(state, *peers, **{**self.defaults, **kw}))
        return self.started[-1]

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        errors = []
        for d in self.started:
            try:
                if d.alive():
                    rc = d.stop()
                    assert rc == 0, f"the daemon in {d.state} exited {rc}: {log_tail(d.log)}"
                else:
                    d.client.close()
            except Exception as e:  # the others are stopped all the same
                errors.append(str(e))
        assert not errors, errors


def daemons_fixture(**defaults: Any) -> Any:
    """A pytest fixture giving a `Daemons` (with these `defaults`): `daemons =
    daemons_fixture()` at a test module's top level. It uses the module's `tmp` fixture, so
    that the daemons are stopped before their directories go."""

    @pytest.fixture
    def daemons(tmp: Path) -> Iterator[Daemons]:
        with Daemons(**defaults) as started:
            yield started

    return daemons
