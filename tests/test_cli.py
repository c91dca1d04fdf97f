"""The `zflood` command, run as a real subprocess: help, init/join and join codes, argument
errors, offline and online publish, status, run's signals, tail, export/import.

Every daemon listens on 127.0.0.1 only, with no mDNS, and is stopped by PID in a fixture. Every
wait is bounded; where there is no event to await (another process's state) we poll at 10 ms.
State directories live under a short /tmp path: ipc:// socket names are limited to ~107 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from daemons import (
    ENV,
    WAIT,
    ZFLOOD,
    Daemon,
    Daemons,
    daemons_fixture,
    member,
    short_dir,
    tmp_fixture,
    wait_for,
)

from zflood import identity
from zflood.errors import BadJoinCode
from zflood.identity import Group
from zflood.statedir import ENDPOINTS, load_group, open_node

SUBCOMMANDS = ["init", "join", "run", "publish", "tail", "status", "check", "export", "import",
               "demo", "invite", "members", "name"]
#: What each subcommand's --help must mention (its options and positionals).
SUBCOMMAND_ARGS = {
    "init": ["--name"],
    "join": ["code", "--name"],
    "run": ["--listen", "--peer", "--interface", "--pub", "--no-discovery", "--verbose",
            "--new-identity"],
    "publish": ["TEXT", "--binary"],
    "tail": ["--all", "-n", "--no-follow", "--json"],
    "status": ["--json", "--code"],
    "check": [],
    "export": ["FILE"],
    "import": ["FILE"],
    "demo": ["--seconds"],
    "invite": [],
    "members": ["--json"],
    "name": ["NEW"],
}
STATUS_KEYS = {"node", "group", "listen", "pub", "control", "peers", "notes", "heads", "running",
               "store",
               "ed25519"}
QUICK = 10.0  # bound for a command that should answer at once

Notes = list[tuple[str, int, str | bytes]]  # (origin hex, seqno, body)

tmp = tmp_fixture("zc")
daemons = daemons_fixture()


# -- helpers -----------------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw_out: bytes

    @property
    def last_line(self) -> str:
        return self.out.rstrip("\n").splitlines()[-1]


def zflood(*args: str | Path, state: Path | None = None, stdin: bytes = b"",
           timeout: float = QUICK, env: dict[str, str] | None = None) -> Result:
    argv = [*ZFLOOD, *(["--state", str(state)] if state is not None else []), *map(str, args)]
    p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                       env=ENV if env is None else env)
    return Result(p.returncode, p.stdout.decode(errors="replace"),
                  p.stderr.decode(errors="replace"), p.stdout)


def ok(*args: str | Path, state: Path | None = None, stdin: bytes = b"") -> Result:
    r = zflood(*args, state=state, stdin=stdin)
    assert r.code == 0, f"zflood {' '.join(map(str, args))} failed ({r.code}): {r.err}"
    assert "Traceback" not in r.err, r.err
    return r


def assert_one_line_error(r: Result, code: int | None = None) -> str:
    """A user-caused failure: non-zero exit (`code` if given), exactly one line on stderr."""
    assert "Traceback" not in r.err, r.err
    assert r.code != 0, f"expected a failure, got exit 0; stdout: {r.out!r}"
    if code is not None:
        assert r.code == code, f"exit {r.code}, expected {code}: {r.err!r}"
    lines = r.err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {r.err!r}"
    assert lines[0].startswith("zflood: "), lines[0]
    return lines[0]


def assert_usage_error(r: Result) -> None:
    """argparse's kind of failure: usage plus one error line, exit 2, no traceback."""
    assert "Traceback" not in r.err, r.err
    assert r.code == 2, (r.code, r.err)
    *usage, last = r.err.strip("\n").splitlines()
    assert "error:" in last or last.startswith("zflood: "), r.err
    if usage:  # usage, maybe wrapped, then "zflood ...: error: ..."
        assert usage[0].startswith("usage: ") and all(line.startswith(" ") for line in usage[1:])


def status_json(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok("status", "--json", state=state).out)
    return data


def held(state: Path) -> Notes:
    """(origin hex, seqno, body) of every note in a stopped member's store, in arrival order."""
    group = load_group(state)
    assert group is not None
    node = open_node(state, group)
    try:
        return [(n.origin.hex(), n.seqno, n.body) for n in node.notes()]
    finally:
        node.close()


def tree_digest(state: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.iterdir()) if p.is_file()}


def init(state: Path) -> str:
    """`zflood init` in `state`; returns the join code."""
    return ok("init", state=state).last_line


# Setup that is not the behaviour under test is done in-process, as the CLI does it (`member`
# too): each subprocess costs ~0.2 s.


def put(state: Path, *bodies: str | bytes) -> None:
    """Publish offline into a stopped member's store."""
    group = load_group(state)
    assert group is not None
    node = open_node(state, group)
    try:
        for body in bodies:
            node.publish(body)
    finally:
        node.close()


def node_id(state: Path) -> str:
    group = load_group(state)
    assert group is not None
    node = open_node(state, group)
    try:
        return node.id.hex()
    finally:
        node.close()


class LineReader:
    """Lines from a child's stdout, each read with a deadline (never a blocking read)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def line(self, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout} s (have {self.buf!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"the process exited ({self.proc.poll()})")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


# -- help --------------------------------------------------------------------------------------


def test_status_help_says_what_status_shows() -> None:
    text = " ".join(ok("status", "--help").out.split())
    for part in ["name", "group", "endpoints", "forks", "sync progress", "since when",
                 "last heard", "lacks", "--code", "join code"]:
        assert part in text, f"status --help does not mention {part!r}"


def test_run_help_says_a_tcp_pub_endpoint_is_open_to_every_local_user() -> None:
    assert "every user of this machine" in " ".join(ok("run", "--help").out.split())


def test_the_demo_starts_its_daemons_from_a_folder_holding_a_checkout(tmp: Path) -> None:
    """From the folder holding a checkout named zflood, `python -m zflood` finds that folder
    first (as a namespace package, under an editable install) or a package there: the demo's
    command must not."""
    from zflood.demo import ZFLOOD as DEMO_ZFLOOD

    (tmp / "zflood" / "zflood").mkdir(parents=True)  # the checkout: its package one level in
    for shadow in (False, True):
        if shadow:  # a folder that is a package of its own: shadows under any install
            (tmp / "zflood" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
        p = subprocess.run([*DEMO_ZFLOOD, "--version"], cwd=tmp, capture_output=True,
                           timeout=QUICK, env=ENV)
        assert p.returncode == 0 and p.stdout.startswith(b"zflood "), p


def test_help_lists_every_subcommand_and_global_option() -> None:
    r = ok("--help")
    for word in [*SUBCOMMANDS, "--state", "--version", "--help"]:
        assert word in r.out, f"{word} missing from zflood --help"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommands_help_mentions_all_its_arguments(command: str) -> None:
    r = ok(command, "--help")
    assert r.out.startswith(f"usage: zflood {command}"), r.out
    for word in [*SUBCOMMAND_ARGS[command], "--help"]:
        assert word in r.out, f"{word} missing from zflood {command} --help"


def test_version_prints_the_package_version() -> None:
    from zflood import __version__

    assert ok("--version").out.strip() == f"zflood {__version__}"


def test_the_console_script_is_installed_and_runs() -> None:
    script = Path(sys.executable).parent / "zflood"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    p = subprocess.run([str(script), "--version"], capture_output=True, timeout=QUICK, env=ENV)
    assert p.returncode == 0 and p.stdout.startswith(b"zflood "), p


# -- init and join -----------------------------------------------------------------------------


def test_init_prints_a_join_code_that_parses_as_the_last_line(tmp: Path) -> None:
    state = tmp / "a"
    r = ok("init", state=state)
    group = Group.from_join_code(r.last_line)
    assert group == load_group(state)
    assert status_json(state)["group"] == group.id.hex()
    assert oct((state / "group.key").stat().st_mode & 0o777) == oct(0o600)


def test_a_second_init_fails_with_one_line_and_changes_nothing(tmp: Path) -> None:
    state = tmp / "a"
    code = init(state)
    before = tree_digest(state)
    line = assert_one_line_error(zflood("init", state=state))
    assert "already" in line
    assert tree_digest(state) == before
    assert load_group(state) == Group.from_join_code(code)


def test_a_second_init_points_to_a_command_that_really_shows_the_code(tmp: Path) -> None:
    """The error sends the user to `zflood invite`, which must then show the join code."""
    state = tmp / "a"
    code = init(state)
    line = assert_one_line_error(zflood("init", state=state))
    assert "zflood invite" in line  # what the message tells the user to run
    assert ok("invite", state=state).out.strip() == code


def test_status_shows_the_join_code_only_when_asked(tmp: Path) -> None:
    state = tmp / "a"
    code = init(state)
    assert code not in ok("status", state=state).out
    assert code not in ok("status", "--json", state=state).out
    assert code in ok("status", "--code", state=state).out
    assert json.loads(ok("status", "--json", "--code", state=state).out)["code"] == code


def test_invite_in_an_empty_state_dir_is_one_line(tmp: Path) -> None:
    assert "no group" in assert_one_line_error(zflood("invite", state=tmp / "a"), 1)


def test_state_is_accepted_after_the_subcommand_too(tmp: Path) -> None:
    code = init(tmp / "a")
    assert ok("invite", "--state", str(tmp / "a")).out.strip() == code
    # given on both sides, the one after the command is the one used
    r = ok("--state", str(tmp / "nothing"), "invite", "--state", str(tmp / "a"))
    assert r.out.strip() == code
    assert ok("--state", str(tmp / "a"), "invite").out.strip() == code


def test_join_with_a_good_code_joins_that_group(tmp: Path) -> None:
    code = member(tmp / "a")
    ok("join", code, state=tmp / "b")
    a, b = status_json(tmp / "a"), status_json(tmp / "b")
    assert a["group"] == b["group"] == Group.from_join_code(code).id.hex()
    assert a["node"] != b["node"]


def test_join_accepts_a_code_retyped_in_capitals_with_spaces(tmp: Path) -> None:
    code = member(tmp / "a")
    ok("join", code.upper().replace("-", " - "), state=tmp / "b")
    assert load_group(tmp / "b") == Group.from_join_code(code)


def test_join_reads_the_code_from_stdin_after_a_dash(tmp: Path) -> None:
    code = member(tmp / "a")
    ok("join", "-", state=tmp / "b", stdin=f"{code}\nanything after the first line\n".encode())
    assert load_group(tmp / "b") == Group.from_join_code(code)


@pytest.mark.parametrize("stdin", [b"", b"\n", b"   \n", b"hello\n", b"\xff\xfe\n"],
                         ids=["empty", "blank line", "spaces", "garbage", "not utf-8"])
def test_join_dash_without_a_good_code_on_stdin_is_one_line_exit_2(tmp: Path,
                                                                   stdin: bytes) -> None:
    member(tmp / "a")
    line = assert_one_line_error(zflood("join", "-", state=tmp / "b", stdin=stdin), code=2)
    assert "join code" in line, line
    assert load_group(tmp / "b") is None


def test_join_help_offers_the_prompt_and_stdin_and_discourages_the_argument() -> None:
    text = " ".join(ok("join", "--help").out.split())
    assert "asked for on the terminal, not echoed" in text
    assert "- to read the code from stdin" in text
    assert "discouraged" in text and "process list" in text


def test_join_without_an_argument_or_a_terminal_is_one_line_exit_2(tmp: Path) -> None:
    """Without a terminal to prompt on, it must not fall back to reading stdin with echo
    (getpass would): it says how to pipe the code instead."""
    member(tmp / "a")
    p = subprocess.run([*ZFLOOD, "--state", str(tmp / "b"), "join"], input=b"", env=ENV,
                       capture_output=True, timeout=QUICK, start_new_session=True)
    r = Result(p.returncode, p.stdout.decode(), p.stderr.decode(), p.stdout)
    line = assert_one_line_error(r, code=2)
    assert "zflood join -" in line, line
    assert load_group(tmp / "b") is None


# The child makes the pty its controlling terminal, so that /dev/tty is the pty, then runs zflood.
_ON_A_TERMINAL = ("import fcntl, os, sys, termios; os.setsid(); "
                  "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.executable, sys.argv[1:])")


def _on_a_terminal(argv: list[str], typed: bytes, prompt: bytes) -> tuple[int, bytes]:
    """Run `argv` on a new pseudo-terminal; once `prompt` appears, type `typed`. Returns the
    exit status and everything the terminal showed."""
    master, slave = os.openpty()
    try:
        with subprocess.Popen([sys.executable, "-c", _ON_A_TERMINAL, *argv], stdin=slave,
                              stdout=slave, stderr=slave, env=ENV, close_fds=True) as p:
            os.close(slave)
            slave = -1
            shown, sent = b"", False
            deadline = time.monotonic() + QUICK
            try:
                while (left := deadline - time.monotonic()) > 0:
                    if not select.select([master], [], [], left)[0]:
                        break
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not chunk:
                        break
                    shown += chunk
                    if not sent and prompt in shown:
                        os.write(master, typed)
                        sent = True
                assert sent, f"no prompt on the terminal: {shown!r}"
                return p.wait(QUICK), shown
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(QUICK)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_join_without_an_argument_asks_on_the_terminal_and_does_not_echo(tmp: Path) -> None:
    code = member(tmp / "a")
    status, shown = _on_a_terminal([*ZFLOOD, "--state", str(tmp / "b"), "join"],
                                   code.encode() + b"\n", b"join code")
    assert status == 0, shown
    assert b"joined group" in shown, shown
    secret = code.encode()
    assert secret not in shown and secret[-12:] not in shown, "the typed code was echoed"
    assert load_group(tmp / "b") == Group.from_join_code(code)


def _one_char_changed(code: str, pos: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    new = alphabet[(alphabet.index(code[pos]) + 1) % len(alphabet)]
    return code[:pos] + new + code[pos + 1 :]


def _bad_codes(code: str) -> dict[str, str]:
    letters = [i for i, ch in enumerate(code) if i >= 4 and ch != "-"]
    return {
        "garbage": "hello world",
        "right prefix, garbage": "zf1-!!!!-????",
        "one character changed": _one_char_changed(code, letters[len(letters) // 2]),
        "first character changed": _one_char_changed(code, letters[0]),
        "truncated at a dash": code[: code.rindex("-")],
        "truncated mid-group": code[:-3],
        "one group too many": code + "-aaaaaa",
        "empty": "",
    }


def test_join_with_a_bad_code_is_one_line_exit_2_and_leaves_no_group(tmp: Path) -> None:
    code = member(tmp / "a")
    for what, bad in _bad_codes(code).items():
        state = tmp / "b"
        r = zflood("join", bad, state=state)
        line = assert_one_line_error(r, code=2)
        assert "join code" in line, (what, line)
        assert load_group(state) is None, f"{what}: a group was saved"
        if what == "one character changed":
            assert "typo" in line or "checksum" in line, line


def test_no_single_character_typo_yields_another_group() -> None:
    """Exhaustively (in-process): every one-character change is refused, or (in the last
    character's padding bits only) decodes to the very same group."""
    group = Group.new()
    code = group.join_code
    for pos in range(4, len(code)):
        if code[pos] == "-":
            continue
        for ch in "abcdefghijklmnopqrstuvwxyz234567":
            if ch == code[pos]:
                continue
            try:
                other = Group.from_join_code(code[:pos] + ch + code[pos + 1 :])
            except BadJoinCode:
                continue
            assert other == group and pos == len(code) - 1, (pos, ch)


def test_join_into_a_member_of_another_group_fails_and_keeps_its_group(tmp: Path) -> None:
    member(tmp / "a")
    code_b = member(tmp / "b")
    before = tree_digest(tmp / "a")
    line = assert_one_line_error(zflood("join", code_b, state=tmp / "a"))
    assert "already" in line or "another" in line, line
    assert tree_digest(tmp / "a") == before


def test_a_join_refused_by_the_store_leaves_the_state_dir_as_it_was(tmp: Path) -> None:
    """With a store of group 1 whose group.key was lost, `join CODE2` must fail before it
    writes anything (the store is opened first), so that `join CODE1` still recovers it."""
    code1 = member(tmp / "a")
    code2 = member(tmp / "b")
    (tmp / "a" / "group.key").unlink()
    before = tree_digest(tmp / "a")
    assert_one_line_error(zflood("join", code2, state=tmp / "a"))
    assert tree_digest(tmp / "a") == before, "a failed join changed the state directory"
    ok("join", code1, state=tmp / "a")  # the right code still recovers it


def test_joining_the_same_group_again_is_harmless(tmp: Path) -> None:
    code = member(tmp / "a")
    ok("join", code, state=tmp / "b")
    node = node_id(tmp / "b")
    ok("join", code, state=tmp / "b")
    assert node_id(tmp / "b") == node


def test_state_dir_comes_from_zflood_state_and_state_flag_wins(tmp: Path) -> None:
    env = dict(ENV, ZFLOOD_STATE=str(tmp / "env"))
    r = zflood("init", env=env)
    assert r.code == 0, r.err
    assert load_group(tmp / "env") == Group.from_join_code(r.last_line)
    r = zflood("init", state=tmp / "flag", env=env)
    assert r.code == 0, r.err
    assert load_group(tmp / "flag") == Group.from_join_code(r.last_line)


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], [], ["join", "a", "b"], ["publish"], ["export"], ["import"], ["--state"],
     ["run", "--peer"], ["publish", "x", "--nope"], ["demo", "--seconds", "soon"]],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_argparse_errors_are_usage_plus_one_line_without_traceback(argv: list[str],
                                                                   tmp: Path) -> None:
    assert_usage_error(zflood(*argv, state=tmp / "a"))


@pytest.mark.parametrize(
    "extra",
    [["--peer", "notanendpoint"], ["--peer", "udp://127.0.0.1:5"], ["--pub", "ipc:///tmp/x"]],
    ids=lambda a: " ".join(a),
)
def test_run_refuses_a_malformed_endpoint_with_one_line_exit_2(extra: list[str],
                                                               tmp: Path) -> None:
    member(tmp / "a")
    r = zflood("run", "--listen", "tcp://127.0.0.1:0", "--no-discovery", *extra, state=tmp / "a")
    assert_one_line_error(r, code=2)
    assert not (tmp / "a" / ENDPOINTS).exists()


def _run_briefly(state: Path, *extra: str, timeout: float = 3.0) -> Result:
    """A `run` that must give up at once: one that is still serving after `timeout` fails."""
    argv = [*ZFLOOD, "--state", str(state), "run", "--no-discovery", *extra]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=5)
            raise AssertionError(f"run {extra} was accepted and kept serving: {err!r}") from None
    # The daemon logs its start and stop (INFO) before the error: judge the last line.
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text
    last = text.strip("\n").splitlines()[-1:] or [""]
    return Result(p.returncode, out.decode(errors="replace"), last[0] + "\n", out)


@pytest.mark.parametrize(
    "extra",
    [["--listen", "tcp://127.0.0.1:0", "--peer", "tcp://127.0.0.1:notaport"],
     ["--listen", "tcp://127.0.0.1:0", "--pub", "tcp://10.1.2.3:5555"],
     ["--listen", "ipc:///tmp/zflood-listen.sock"]],
    ids=["peer-port-not-a-number", "pub-off-loopback", "listen-not-tcp"],
)
def test_run_refuses_an_unusable_endpoint_with_one_error_line(extra: list[str],
                                                              tmp: Path) -> None:
    member(tmp / "a")
    assert_one_line_error(_run_briefly(tmp / "a", *extra))
    assert not (tmp / "a" / ENDPOINTS).exists()


def test_run_on_a_listen_endpoint_that_zeromq_rejects_is_one_line_not_a_traceback(
    tmp: Path,
) -> None:
    """What libzmq cannot bind is a one-line error, not a ZMQError traceback."""
    member(tmp / "a")
    assert_one_line_error(_run_briefly(tmp / "a", "--listen", "garbage"))


def test_run_on_a_busy_port_is_one_line_not_a_traceback(tmp: Path) -> None:
    """Two daemons on one machine (same default port 4077, or any taken port): the second
    says which port is taken, in one line."""
    member(tmp / "a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _run_briefly(tmp / "a", "--listen", f"tcp://127.0.0.1:{port}")
    line = assert_one_line_error(r)
    assert str(port) in line or "in use" in line, line


def test_run_refuses_a_listen_port_out_of_range(tmp: Path) -> None:
    """libzmq would take port 99999 modulo 65536 and serve on 34463: refuse it instead."""
    member(tmp / "a")
    assert_one_line_error(_run_briefly(tmp / "a", "--listen", "tcp://127.0.0.1:99999"))


# -- publish -----------------------------------------------------------------------------------


def test_publish_without_a_daemon_goes_into_the_store(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    r = ok("publish", "hello offline", state=state)
    assert "offline" in r.out
    st = status_json(state)
    assert st["running"] is False and st["notes"] == 1
    assert st["heads"] == {st["node"]: 1}
    assert held(state) == [(st["node"], 0, "hello offline")]


def test_publish_dash_reads_text_from_stdin_exactly(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    text = "line one\nligne deux, été\n\n"
    ok("publish", "-", state=state, stdin=text.encode())
    assert [body for _, _, body in held(state)] == [text]


def test_publish_binary_publishes_bytes_from_stdin_and_from_the_argument(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    raw = bytes(range(256)) + b"\xff\xfe\x00"
    ok("publish", "--binary", "-", state=state, stdin=raw)
    ok("publish", "--binary", "abc", state=state)
    ok("publish", "abc", state=state)
    assert [body for _, _, body in held(state)] == [raw, b"abc", "abc"]


def test_publish_of_non_utf8_stdin_without_binary_is_one_line_and_publishes_nothing(
    tmp: Path,
) -> None:
    state = tmp / "a"
    member(state)
    line = assert_one_line_error(zflood("publish", "-", state=state, stdin=b"caf\xe9\xff"))
    assert "--binary" in line
    assert held(state) == []


def test_an_argument_that_is_not_utf8_is_one_line_and_publishes_nothing(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    for args in ([b"publish", b"caf\xe9"], [b"name", b"caf\xe9"]):
        p = subprocess.run([*map(os.fsencode, ZFLOOD), b"--state", os.fsencode(state), *args],
                           capture_output=True, timeout=QUICK, env=ENV)
        r = Result(p.returncode, p.stdout.decode(), p.stderr.decode(errors="replace"), p.stdout)
        assert "not UTF-8" in assert_one_line_error(r, 2)
    assert held(state) == []


def test_publish_of_an_oversized_note_is_one_line(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    assert_one_line_error(zflood("publish", "-", state=state, stdin=b"x" * 300_000))
    assert held(state) == []


def test_commands_needing_a_group_fail_with_one_line_in_an_empty_state_dir(tmp: Path) -> None:
    for argv in (["publish", "x"], ["status"], ["status", "--json"], ["export", str(tmp / "f")],
                 ["import", str(tmp / "f")], ["tail"]):
        assert_one_line_error(zflood(*argv, state=tmp / "empty"))
    assert_one_line_error(_run_briefly(tmp / "empty", "--listen", "tcp://127.0.0.1:0"))
    assert not (tmp / "f").exists()


def test_publish_with_a_running_daemon_goes_through_it(tmp: Path,
                                                       daemons: Daemons) -> None:
    state = tmp / "a"
    member(state)
    d = daemons(state)
    r = ok("publish", "through the daemon", state=state)
    assert "offline" not in r.out
    ok("publish", "-", state=state, stdin=b"and from stdin")
    st = d.client.status()
    assert st["notes"] == 2
    notes, _ = d.client.read(0)
    assert [n["body"] for n in notes] == ["through the daemon", "and from stdin"]
    assert status_json(state)["notes"] == 2
    line = assert_one_line_error(zflood("publish", "-", state=state, stdin=b"y" * 300_000))
    assert "262144" in line or "at most" in line
    assert d.client.status()["notes"] == 2


# -- status ------------------------------------------------------------------------------------


def test_status_json_of_a_running_daemon_shows_node_endpoints_peers_and_heads(
    tmp: Path, daemons: Daemons
) -> None:
    code = member(tmp / "a")
    member(tmp / "b", code)
    put(tmp / "a", "before run")
    a = daemons(tmp / "a")
    b = daemons(tmp / "b", a.listen)
    wait_for(lambda: any(p["state"] == "connected" for p in a.client.status()["peers"]), WAIT,
             "the link from b")
    st = status_json(tmp / "a")
    assert st.keys() >= STATUS_KEYS, st.keys()
    assert st["running"] is True
    assert st["group"] == Group.from_join_code(code).id.hex()
    assert st["listen"] == a.listen and st["listen"].startswith("tcp://127.0.0.1:")
    assert st["pub"] and st["control"]
    assert st["notes"] == 1 and st["heads"] == {st["node"]: 1}
    b_node = b.client.status()["node"]
    assert [p["node"] for p in st["peers"]] == [b_node]
    for peer in st["peers"]:
        assert {"node", "address", "state"} <= peer.keys()
        assert peer["state"] == "connected" and peer["address"].startswith("tcp://127.0.0.1:")
    assert st["ed25519"] == identity.backend()  # the daemon runs with this same install
    text = ok("status", state=tmp / "a").out
    assert st["node"] in text and "running" in text and f"peer    {b_node[:8]} connected" in text
    assert f"ed25519 by {identity.backend()}" in text


def test_status_answers_with_the_daemon_stopped_and_after_a_kill(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    put(state, "x")
    st = status_json(state)
    assert st.keys() >= STATUS_KEYS
    assert st["running"] is False and st["notes"] == 1 and st["peers"] == []
    # kill -9 leaves a stale endpoints.json: status and offline publish still work
    d = daemons(state)
    d.kill()
    assert (state / ENDPOINTS).exists()
    ok("publish", "after the kill", state=state)
    st = status_json(state)
    assert st["running"] is False and st["notes"] == 2


# -- run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_cleanly_on_a_signal(sig: int, tmp: Path,
                                       daemons: Daemons) -> None:
    state = tmp / "a"
    member(state)
    d = daemons(state)
    d.client.publish("while running")
    start = time.monotonic()
    assert d.stop(sig, timeout=5.0) == 0
    took = time.monotonic() - start
    assert took < 5.0
    log = d.log.read_text()
    assert "Traceback" not in log and "stopping" in log, log
    assert not (state / ENDPOINTS).exists()
    assert not (state / "control.sock").exists() and not (state / "pub.sock").exists()
    # the store was released: offline commands work at once
    ok("publish", "after stop", state=state)
    assert len(held(state)) == 2


def _concurrently(*argvs: list[str], timeout: float) -> list[tuple[Result, float]]:
    """Run several commands at once: (result, seconds it took) for each, in order. Their
    output is a few lines, so the pipes are read after they exit."""
    started = time.monotonic()
    procs = [subprocess.Popen([*ZFLOOD, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=ENV) for argv in argvs]
    took: dict[int, float] = {}
    try:
        while len(took) < len(procs):
            assert time.monotonic() < started + timeout, f"still running after {timeout} s"
            for i, p in enumerate(procs):
                if i not in took and p.poll() is not None:
                    took[i] = time.monotonic() - started
            time.sleep(0.01)  # other processes: nothing to await
        results = []
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=5)
            results.append((Result(p.returncode, out.decode(errors="replace"),
                                   err.decode(errors="replace"), out), took[i]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=5)


def test_while_a_daemon_runs_a_second_run_export_and_import_fail_with_one_line(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    first = daemons(state)
    first.client.publish("held")
    ends = (state / ENDPOINTS).read_text()
    member(tmp / "other")
    put(tmp / "other", "other's")
    ok("export", tmp / "other.zf", state=tmp / "other")
    s = ["--state", str(state)]
    results = _concurrently(
        [*s, "run", "--listen", "tcp://127.0.0.1:0", "--no-discovery"],
        [*s, "export", str(tmp / "x.zf")],
        [*s, "import", str(tmp / "other.zf")],
        timeout=15.0,
    )
    (run, _), (export, _), (imp, _) = results
    run_err = run.err.strip("\n").splitlines()[-1:]
    assert "Traceback" not in run.err and run.code != 0, run.err
    assert_one_line_error(Result(run.code, run.out, "".join(run_err), run.raw_out))
    assert "daemon" in assert_one_line_error(export)
    assert "daemon" in assert_one_line_error(imp)
    assert not (tmp / "x.zf").exists()
    # the first daemon is untouched: same sockets, same notes, still serving
    assert (state / ENDPOINTS).read_text() == ends
    assert first.client.status()["notes"] == 1
    assert status_json(state)["running"] is True
    slow = [(argv, round(took, 1)) for argv, (_, took) in zip(
        ["run", "export", "import"], results, strict=True) if took > 3.0]
    assert not slow, f"these waited on the daemon's store lock before failing: {slow}"


# -- tail --------------------------------------------------------------------------------------


def test_tail_all_json_prints_history_then_live_notes_one_object_a_line(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    put(state, "first", b"\x00\xffbin")
    d = daemons(state)
    node = d.client.status()["node"]
    with subprocess.Popen([*ZFLOOD, "--state", str(state), "tail", "--all", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV) as tail:
        try:
            lines = LineReader(tail)
            got = [json.loads(lines.line()) for _ in range(2)]
            assert [(n["origin"], n["seqno"], n["index"]) for n in got] == [
                (node, 0, 0), (node, 1, 1)]
            assert got[0]["body"] == "first"
            assert got[1]["body"] == {"base64": base64.b64encode(b"\x00\xffbin").decode()}
            assert all(len(n["id"]) == 64 for n in got)
            d.client.publish("live one")
            ok("publish", "live two", state=state)
            live = [json.loads(lines.line()) for _ in range(2)]
            assert [(n["body"], n["index"]) for n in live] == [("live one", 2), ("live two", 3)]
        finally:
            tail.send_signal(signal.SIGINT)
            rc = tail.wait(timeout=5)
            err = tail.stderr.read().decode() if tail.stderr else ""
    assert rc == 130 and "Traceback" not in err, (rc, err)


def test_tail_without_all_prints_only_notes_published_after_it_started(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    put(state, "old 0", "old 1", "old 2")
    d = daemons(state)
    with subprocess.Popen([*ZFLOOD, "--state", str(state), "tail"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV) as tail:
        try:
            lines = LineReader(tail)
            # tail starts at the count it reads from the daemon when it comes up; keep
            # publishing until a line shows (a note published before that is rightly skipped)
            deadline = time.monotonic() + WAIT
            first = ""
            while not first:
                assert time.monotonic() < deadline, "tail printed nothing"
                d.client.publish("new")
                try:
                    first = lines.line(timeout=0.05)
                except AssertionError:
                    continue
            index = int(first.split()[0])
            assert index >= 3 and first.endswith(" new"), first
        finally:
            tail.terminate()
            tail.wait(timeout=5)


def tail_lines(state: Path, *args: str) -> tuple[list[str], str]:
    r = ok("tail", *args, state=state)
    return r.out.splitlines(), r.err


def test_tail_with_the_daemon_stopped_reads_the_store_and_exits(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    put(state, "one", "two", "three")
    lines, err = tail_lines(state, "-n", "2")
    assert [line.split(": ", 1)[1] for line in lines] == ["two", "three"]
    assert "no daemon is running" in err and len(err.splitlines()) == 1  # says it won't follow
    lines, err = tail_lines(state, "--all", "--no-follow")
    assert len(lines) == 3 and err == ""
    assert tail_lines(state, "--no-follow") == ([], "")  # only new notes: none
    # after a kill -9 the stale endpoints.json names a dead pid: no wait for a socket
    daemons(state).kill()
    start = time.monotonic()
    lines, _ = tail_lines(state, "-n", "1", "--json")
    assert [json.loads(line)["body"] for line in lines] == ["three"]
    assert time.monotonic() - start < 3.0, "tail waited for a daemon whose pid is dead"


def test_tail_prints_each_note_on_one_line_escaping_what_would_break_it(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    bodies = ["two\nlines", "tab\there\r", "back\\slash", "\x1b[31mred\x1b[0m", "bidi\u202eevil",
              "café ☕"]
    put(state, *bodies)
    lines, _ = tail_lines(state, "--all", "--no-follow")
    assert [line.split(": ", 1)[1] for line in lines] == [
        "two\\nlines", "tab\\there\\r", "back\\\\slash", "\\x1b[31mred\\x1b[0m", "bidi\\u202eevil",
        "café ☕"]
    # JSON carries the text as it is
    lines, _ = tail_lines(state, "--all", "--no-follow", "--json")
    assert [json.loads(line)["body"] for line in lines] == bodies


def test_tail_n_no_follow_through_a_running_daemon_prints_the_last_n_and_exits(
    tmp: Path, daemons: Daemons
) -> None:
    state = tmp / "a"
    member(state)
    put(state, *(f"n{i}" for i in range(5)))
    d = daemons(state)
    lines, err = tail_lines(state, "-n", "2", "--no-follow")
    assert [line.split(": ", 1)[1] for line in lines] == ["n3", "n4"] and err == ""
    assert len(tail_lines(state, "-n", "100", "--no-follow")[0]) == 5
    assert tail_lines(state, "--no-follow")[0] == []
    d.client.publish("n5")
    lines, _ = tail_lines(state, "--all", "--no-follow")
    assert [int(line.split()[0]) for line in lines] == list(range(6))
    assert_usage_error(zflood("tail", "-n", "-1", state=state))


def test_a_reused_pid_in_stale_endpoints_does_not_pass_for_a_daemon(tmp: Path) -> None:
    """After a kill -9 and a reboot, endpoints.json may name a pid that now belongs to another
    process: publish still goes into the store and status says the daemon is stopped."""
    state = tmp / "a"
    member(state)
    (state / ENDPOINTS).write_text(json.dumps({
        "pid": os.getpid(), "listen": "tcp://127.0.0.1:1",
        "pub": [f"ipc://{state}/pub.sock"], "control": [f"ipc://{state}/control.sock"],
    }))
    start = time.monotonic()
    assert "offline" in ok("publish", "into the store", state=state).out
    assert status_json(state)["running"] is False
    assert time.monotonic() - start < 3.0, "the CLI waited for a daemon that is not there"
    assert [b for _, _, b in held(state)] == ["into the store"]


# -- names and members -------------------------------------------------------------------------


def test_members_name_each_other_and_status_shows_peers_by_name(
    tmp: Path, daemons: Daemons
) -> None:
    a_dir, b_dir = tmp / "a", tmp / "b"
    code = ok("init", "--name", "kitchen", state=a_dir).last_line
    ok("join", code, "--name", "attic", state=b_dir)
    assert_one_line_error(zflood("name", "two\nlines", state=a_dir), 2)
    assert ok("name", state=a_dir).out.strip() == "kitchen"  # offline, from the store
    a = daemons(a_dir)
    b = daemons(b_dir, a.listen)  # a static peer of b
    a_id, b_id = a.client.status()["node"], b.client.status()["node"]

    def names(d: Daemon) -> dict[str, str | None]:
        return {m["origin"]: m["name"] for m in d.client.status()["members"]}

    both = {a_id: "kitchen", b_id: "attic"}
    wait_for(lambda: names(a) == both and names(b) == both, WAIT, "both names on both")
    wait_for(lambda: all(p["state"] == "connected" for d in (a, b)
                         for p in d.client.status()["peers"]), WAIT, "the link")
    for d, other in ((a, "attic"), (b, "kitchen")):
        st = d.client.status()
        (peer,) = st["peers"]  # a static peer shows once, not also as an address dialled
        assert peer["name"] == other and peer["they_lack"] == 0 and peer["we_lack"] == 0
        assert time.time() - WAIT < peer["since"] <= peer["heard"] <= time.time() + 1
        assert st["sync"]["lacking"] == 0
    text = ok("status", state=b_dir).out
    assert text.startswith(f"node    attic ({b_id[:8]}) {b_id}")
    assert f"peer    kitchen ({a_id[:8]}) connected for " in text
    assert ", heard " in text and "; it lacks 0, we lack 0; tcp://127.0.0.1:" in text
    assert "sync    in sync" in text
    rows = ok("members", state=b_dir).out.splitlines()
    assert rows[0].split() == ["NAME", "ID", "NOTES", "LATEST", "NOTE", "ARRIVED", "LINKED"]
    assert rows[1].startswith("attic") and rows[1].endswith("this node")
    assert rows[2].startswith("kitchen") and rows[2].endswith("yes")
    members = json.loads(ok("members", "--json", state=b_dir).out)
    assert {m["origin"]: (m["notes"], m["linked"]) for m in members} == {
        a_id: (1, True), b_id: (1, False)}
    assert all(time.time() - 60 < m["last"] <= time.time() for m in members)

    # a new name spreads; the tail shows who wrote what
    assert "now called pantry" in ok("name", "pantry", state=a_dir).out
    wait_for(lambda: names(b)[a_id] == "pantry", WAIT, "the new name at b")
    a.client.publish("hello")
    wait_for(lambda: b.client.status()["notes"] == 4, WAIT, "the note at b")
    lines, _ = tail_lines(b_dir, "-n", "2", "--no-follow")
    assert lines[0].endswith(f"pantry {a_id[:8]}#1: [names itself pantry]"), lines
    assert lines[1].endswith(f"pantry {a_id[:8]}#2: hello"), lines
    b.stop()
    # with b stopped, its store still knows every name, and nobody is linked
    members = json.loads(ok("members", "--json", state=b_dir).out)
    assert {m["origin"]: (m["name"], m["linked"]) for m in members} == {
        a_id: ("pantry", False), b_id: ("attic", False)}
    assert f"pantry {a_id[:8]}#2: hello" in tail_lines(b_dir, "-n", "1")[0][0]


def test_a_new_member_is_named_after_its_host_by_default(tmp: Path) -> None:
    import socket

    from zflood.statedir import default_name

    ok("init", state=tmp / "a")
    assert ok("name", state=tmp / "a").out.strip() == default_name()
    assert default_name() == socket.gethostname().split(".")[0] or default_name() == "member"
    # joining again keeps the name it has
    ok("name", "renamed", state=tmp / "a")
    code = ok("invite", state=tmp / "a").out.strip()
    ok("join", code, state=tmp / "a")
    assert ok("name", state=tmp / "a").out.strip() == "renamed"


# -- export / import ---------------------------------------------------------------------------


def test_export_is_readable_by_its_owner_only(tmp: Path) -> None:
    member(tmp / "a")
    put(tmp / "a", "secret")
    (tmp / "old.zf").write_bytes(b"")
    (tmp / "old.zf").chmod(0o644)  # overwriting a file that was world-readable
    for name in ("new.zf", "old.zf"):
        ok("export", tmp / name, state=tmp / "a")
        assert oct((tmp / name).stat().st_mode & 0o777) == oct(0o600)


@pytest.fixture(scope="module")
def export_source() -> Iterator[tuple[bytes, str, Notes]]:
    """Members a and b of one group, each with notes; a holds all of them (both origins) and
    exports them. Made once: (the export file's bytes, the join code, a's notes)."""
    with short_dir("zc") as tmp:
        code = member(tmp / "a")
        member(tmp / "b", code)
        put(tmp / "a", "a 0", "a 1", "a 2", b"\x00\x01")
        put(tmp / "b", "b 0", "b 1")
        ok("export", tmp / "b.zf", state=tmp / "b")
        ok("import", tmp / "b.zf", state=tmp / "a")
        r = ok("export", tmp / "a.zf", state=tmp / "a")
        assert "6 notes" in r.out, r.out
        yield (tmp / "a.zf").read_bytes(), code, held(tmp / "a")


@pytest.fixture
def exported(tmp: Path, export_source: tuple[bytes, str, Notes]) -> tuple[Path, str, Notes]:
    """(a copy of the export file, the join code, the exported notes)."""
    data, code, notes = export_source
    (tmp / "a.zf").write_bytes(data)
    return tmp / "a.zf", code, notes


def test_export_then_import_brings_every_note_to_another_member(
    tmp: Path, exported: tuple[Path, str, Notes]
) -> None:
    path, code, notes = exported
    member(tmp / "c", code)
    put(tmp / "c", "c's own")
    r = ok("import", path, state=tmp / "c")
    assert "6 new" in r.out, r.out
    got = held(tmp / "c")
    assert sorted(got[1:], key=str) == sorted(notes, key=str)
    assert got[0][2] == "c's own"
    assert len(got) == 7
    assert "0 new" in ok("import", path, state=tmp / "c").out  # idempotent


def test_import_into_another_groups_member_fails_with_one_line(
    tmp: Path, exported: tuple[Path, str, Notes]
) -> None:
    path, _, _ = exported
    member(tmp / "other")
    before = tree_digest(tmp / "other")
    line = assert_one_line_error(zflood("import", path, state=tmp / "other"))
    assert "another group" in line
    assert held(tmp / "other") == []
    assert tree_digest(tmp / "other") == before


def test_import_of_a_file_that_is_not_an_export_fails_with_one_line(tmp: Path) -> None:
    member(tmp / "c")
    for name, data in [("empty", b""), ("text", b"hello\n"), ("random", os.urandom(500)),
                       ("cbor", cbor2.dumps({"zflood-export": 2}))]:
        (tmp / name).write_bytes(data)
        assert_one_line_error(zflood("import", tmp / name, state=tmp / "c"))
    assert_one_line_error(zflood("import", tmp / "missing", state=tmp / "c"))
    assert held(tmp / "c") == []


def _batch_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the header and of each CBOR item after it."""
    import io

    f = io.BytesIO(data)
    spans = []
    while f.tell() < len(data):
        start = f.tell()
        cbor2.load(f)
        spans.append((start, f.tell()))
    return spans


def _assert_nothing_invalid(state: Path, notes: Notes) -> None:
    got = held(state)
    assert all(n in notes for n in got), f"imported notes that were not exported: {got}"


def test_a_truncated_export_fails_with_one_line_and_imports_nothing_invalid(
    tmp: Path, exported: tuple[Path, str, Notes]
) -> None:
    path, code, notes = exported
    data = path.read_bytes()
    spans = _batch_offsets(data)
    cuts = {1, spans[0][1] - 1, spans[1][0] + 5, spans[1][1] - 1, len(data) - 1}
    for cut in sorted(cuts):
        state = tmp / f"t{cut}"
        member(state, code)
        (tmp / "cut.zf").write_bytes(data[:cut])
        assert_one_line_error(zflood("import", tmp / "cut.zf", state=state))
        _assert_nothing_invalid(state, notes)


def test_an_export_cut_between_two_batches_is_reported_as_damaged(
    tmp: Path, exported: tuple[Path, str, Notes]
) -> None:
    """An export ends with a mark holding its note count, so a copy cut exactly after a batch
    is reported as damaged rather than imported in part as if complete."""
    path, code, _ = exported
    data = path.read_bytes()
    spans = _batch_offsets(data)
    assert len(spans) == 4  # header, a's batch, b's batch, end mark
    (tmp / "cut.zf").write_bytes(data[: spans[1][1]])
    member(tmp / "c", code)
    r = zflood("import", tmp / "cut.zf", state=tmp / "c")
    assert "ends early" in assert_one_line_error(r)


def _field_offsets(data: bytes) -> dict[str, int]:
    """A byte inside each field of the first batch: [4, origin, start, prev, bodies, sig]."""
    spans = _batch_offsets(data)
    b0, _ = spans[1]
    batch = cbor2.loads(data[spans[1][0] : spans[1][1]])
    origin_at = data.index(batch[1], b0)
    prev_at = data.index(batch[3], origin_at + 32)
    body_at = data.index(batch[4][0].encode(), prev_at + 32)
    sig_at = data.index(batch[5], body_at)
    return {
        "header": spans[0][0] + 3,
        "message type": b0 + 1,
        "origin": origin_at + 7,
        "start": origin_at + 32,  # the start seqno follows the origin
        "prev": prev_at + 11,
        "body": body_at + 1,
        "sig": sig_at + 20,
        "second batch": spans[2][0] + 40,
    }


@pytest.mark.parametrize(
    "field",
    ["header", "message type", "origin", "start", "prev", "body", "sig", "second batch"],
)
def test_a_flipped_bit_in_an_export_fails_with_one_line_and_imports_nothing_invalid(
    field: str, tmp: Path, exported: tuple[Path, str, Notes]
) -> None:
    """For field "start": a batch's start seqno flipped 0 -> 1 leaves a gap that no peer will
    fill from a file: an error, not "imported 0 new notes"."""
    path, code, notes = exported
    data = bytearray(path.read_bytes())
    data[_field_offsets(bytes(data))[field]] ^= 0x01
    (tmp / "flipped.zf").write_bytes(data)
    member(tmp / "c", code)
    assert_one_line_error(zflood("import", tmp / "flipped.zf", state=tmp / "c"))
    _assert_nothing_invalid(tmp / "c", notes)


def test_a_store_of_another_group_is_a_configuration_error(tmp: Path) -> None:
    """Exit 78 (EX_CONFIG): systemd's RestartPreventExitStatus stops the restart loop, since
    only a person can mend a state directory whose store and group.key disagree."""
    a, b = tmp / "a", tmp / "b"
    member(a)
    member(b)
    (a / "group.key").write_bytes((b / "group.key").read_bytes())
    done = subprocess.run([*ZFLOOD, "--state", str(a), "publish", "x"], capture_output=True,
                          text=True, timeout=30, env=ENV, check=False)
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and "belongs to another group" in done.stderr


# -- what a new user meets ---------------------------------------------------------------------


def test_state_is_accepted_after_the_apps_own_subcommands_too(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    ok("chat", "send", "hello", "--state", str(state))
    assert "hello" in ok("chat", "log", "--state", str(state)).out
    ok("mail", "queue", "--state", str(state))
    r = zflood("mail", "queue", "--instance", "nosuch", "--state", str(state))
    assert_one_line_error(r, 2)  # both given: refused, as for the other commands


def test_tail_into_a_reader_that_left_stops_quietly(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    put(state, *[f"note {i} " + "x" * 100 for i in range(2000)])  # far more than a pipe holds
    argv = [*ZFLOOD, "--state", str(state), "tail", "--all", "--no-follow"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=ENV) as p:
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.readline().strip()
        p.stdout.close()  # `| head -1`
        err = p.stderr.read().decode()
        code = p.wait(QUICK)
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert err == "" and code == 128 + signal.SIGPIPE


def test_publish_of_a_stdin_far_larger_than_a_note_says_so(tmp: Path,
                                                         daemons: Daemons) -> None:
    state = tmp / "a"
    member(state)
    d = daemons(state)
    line = assert_one_line_error(zflood("publish", "-", state=state, stdin=b"y" * 3_000_000))
    assert "a note body is at most 262144 bytes" in line, line
    assert d.client.status()["notes"] == 0


def test_publish_help_says_binary_takes_the_argument_too() -> None:
    out = ok("publish", "--help").out
    assert "publish stdin as bytes" not in out and "TEXT, or stdin" in " ".join(out.split())


def _file_size_limit(limit: int) -> Any:
    def limited() -> None:  # in the child: a write past `limit` fails (EFBIG), as a full disk
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


def test_an_export_that_fails_leaves_an_older_export_of_that_name_whole(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    put(state, "kept")
    backup = tmp / "backup.zf"
    ok("export", backup, state=state)
    before = backup.read_bytes()
    put(state, *[os.urandom(2000) for _ in range(100)])  # the next export: about 200 KB
    argv = [*ZFLOOD, "--state", str(state), "export", str(backup)]
    p = subprocess.run(argv, capture_output=True, timeout=QUICK, env=ENV,
                       preexec_fn=_file_size_limit(50_000))
    r = Result(p.returncode, p.stdout.decode(), p.stderr.decode(), p.stdout)
    assert_one_line_error(r, 1)
    assert backup.read_bytes() == before
    assert sorted(f.name for f in tmp.iterdir()) == ["a", "backup.zf"]
    assert "exported 101 notes" in ok("export", backup, state=state).out
    assert "imported 0 new notes" in ok("import", backup, state=state).out


def test_a_store_of_another_group_names_the_two_files_that_disagree(tmp: Path) -> None:
    a, b = tmp / "a", tmp / "b"
    member(a)
    member(b)
    (a / "group.key").write_bytes((b / "group.key").read_bytes())
    line = assert_one_line_error(zflood("status", state=a), 78)
    assert str(a / "node.db") in line and str(a / "group.key") in line, line


def test_a_missing_or_unusable_file_is_named_plainly(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    line = assert_one_line_error(zflood("import", tmp / "nothing.zf", state=state), 1)
    assert line == f"zflood: {tmp / 'nothing.zf'}: No such file or directory"
    line = assert_one_line_error(zflood("export", tmp, state=state), 1)
    assert line == f"zflood: {tmp}: Is a directory"


def test_join_ended_at_its_prompt_ends_the_prompts_line(tmp: Path) -> None:
    status, shown = _on_a_terminal([*ZFLOOD, "--state", str(tmp / "b"), "join"], b"\x04",
                                   b"join code")
    assert status == 2, shown
    assert b"(not shown): \r\nzflood: bad join code" in shown, shown


def test_tail_refuses_all_and_n_together_rather_than_ignore_one(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    assert_usage_error(zflood("tail", "--all", "-n", "2", "--no-follow", state=state))
