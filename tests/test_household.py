"""Several groups on one machine and the daemon as a service: each member's own port, chosen
once and kept; --listen overriding it; a systemd instance named by --instance; sockets opened
to a group; configuration errors exiting 78 under systemd; log lines marked with their
journal priority.

Real `zflood run` processes (without mDNS) stopped by PID under a deadline; what systemd
itself does with the unit is tested in tests/test_container.py. Daemons given no --listen
bind 0.0.0.0 on their own port, as they would at home, and talk to nobody.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import ENV, ZFLOOD, Daemons, daemons_fixture, member, tmp_fixture

from zflood import cli, statedir
from zflood.statedir import DEFAULT_PORT, PORT, PORT_RANGE, port_choices

tmp = tmp_fixture("zh")
daemons = daemons_fixture(listen=None)
BRIEF = 10.0  # bound on a `run` that must give up at once


def kept(state: Path) -> int:
    return int((state / PORT).read_text())


def journal_run(state: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = BRIEF) -> tuple[int, list[str]]:
    """`zflood --state STATE ARGS` with stderr into a file that $JOURNAL_STREAM names, as
    systemd connects a service's stderr to the journal; its exit status and stderr lines."""
    log = state.parent / f"{state.name}.journal"
    with open(log, "wb") as err:
        st = os.fstat(err.fileno())
        env = {**ENV, **(env or {}), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        with subprocess.Popen([*ZFLOOD, "--state", str(state), *args], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=err) as p:
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
                raise AssertionError(f"zflood {args} kept running: {log.read_text()}") from None
    text = log.read_text()
    assert "Traceback" not in text, text
    return rc, text.splitlines()


def systemd_env(**more: str) -> dict[str, str]:
    return {"INVOCATION_ID": "0123456789abcdef0123456789abcdef", **more}


# -- ports -------------------------------------------------------------------------------------


def test_two_groups_with_default_options_run_side_by_side_each_on_a_port_it_keeps(
    tmp: Path, daemons: Daemons
) -> None:
    member(tmp / "family")
    member(tmp / "work")
    first = [daemons(tmp / "family"), daemons(tmp / "work")]
    ports = [d.port for d in first]
    assert ports[0] != ports[1]
    for d in first:
        assert d.listen == f"tcp://0.0.0.0:{d.port}"
        assert kept(d.state) == d.port
        assert d.client.status()["listen"] == d.listen  # what `status` shows
        assert d.stop() == 0
    again = [daemons(tmp / "family"), daemons(tmp / "work")]
    assert [d.port for d in again] == ports


def test_a_second_member_of_one_group_on_this_machine_takes_the_next_free_port(
    tmp: Path, daemons: Daemons
) -> None:
    """Members of one group prefer the same port (derived from the group id): the second on
    one machine finds it taken and moves on, and keeps what it found."""
    code = member(tmp / "a")
    member(tmp / "b", code)
    a, b = daemons(tmp / "a"), daemons(tmp / "b")
    choices = port_choices(bytes.fromhex(a.group), legacy=False)
    assert a.port != b.port
    assert choices.index(b.port) > choices.index(a.port)
    assert (kept(tmp / "a"), kept(tmp / "b")) == (a.port, b.port)


def test_listen_overrides_the_kept_port_and_is_not_kept(tmp: Path, daemons: Daemons) -> None:
    member(tmp / "a")
    d = daemons(tmp / "a", listen="tcp://127.0.0.1:0")
    assert d.listen.startswith("tcp://127.0.0.1:")
    assert not (tmp / "a" / PORT).exists()


def test_a_kept_port_that_is_taken_is_an_error_line_naming_the_file(tmp: Path) -> None:
    """A kept port is not moved (peers and firewalls name it): a one-line error, at error
    priority in the journal, and exit 1, so that systemd tries again later."""
    state = tmp / "a"
    member(state)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (state / PORT).write_text(f"{port}\n")
        rc, lines = journal_run(state, "run", "--no-discovery")
    assert rc == 1, lines
    assert lines[-1].startswith(f"<3>zflood: cannot listen on tcp://0.0.0.0:{port}"), lines
    assert "in use" in lines[-1] and str(state / PORT) in lines[-1], lines
    assert kept(state) == port
    # everything else it said is marked too: info as 6
    assert lines[:-1] and all(line.startswith(("<6>", "<4>")) for line in lines[:-1]), lines


def test_a_damaged_port_file_is_one_error_line_and_a_configuration_error(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    (state / PORT).write_text("40x77\n")
    rc, lines = journal_run(state, "run", "--no-discovery")
    assert rc == 78 and lines == [f"<3>zflood: {state / PORT} holds '40x77', not a port: fix "
                                  "it, or remove it to let zflood choose one"], lines


def test_port_choices_cover_the_range_once_starting_from_the_groups_own() -> None:
    for group in (bytes(32), b"\xff" * 32, bytes(range(32))):
        ports = port_choices(group, legacy=False)
        assert sorted(ports) == list(range(DEFAULT_PORT, DEFAULT_PORT + PORT_RANGE))
        assert ports == port_choices(group, legacy=False)  # the same on every member
        legacy = port_choices(group, legacy=True)
        assert legacy[0] == DEFAULT_PORT and sorted(legacy) == sorted(ports)
    assert port_choices(bytes(32), legacy=False)[0] != port_choices(b"\x01" * 32,
                                                                    legacy=False)[0]


def test_a_store_from_before_kept_ports_keeps_the_old_default_first(
    tmp: Path, daemons: Daemons
) -> None:
    """A member with notes and no port file ran when every group listened on 4077."""
    member(tmp / "a")
    subprocess.run([*ZFLOOD, "--state", str(tmp / "a"), "publish", "old"], env=ENV,
                   capture_output=True, timeout=BRIEF, check=True)
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", DEFAULT_PORT))
        except OSError:
            pytest.skip(f"port {DEFAULT_PORT} is taken on this machine")
    assert daemons(tmp / "a").port == DEFAULT_PORT


# -- configuration errors under systemd --------------------------------------------------------


def test_a_join_code_with_a_typo_in_the_credential_exits_78_at_error_priority(
    tmp: Path,
) -> None:
    code = member(tmp / "other")
    typo = code[:-3] + ("a" if code[-3] != "a" else "b") + code[-2:]
    creds = tmp / "creds"
    creds.mkdir()
    (creds / "join").write_text(typo + "\n")
    rc, lines = journal_run(tmp / "family", "run", "--no-discovery",
                            env=systemd_env(CREDENTIALS_DIRECTORY=str(creds)))
    assert rc == 78, lines
    assert len(lines) == 1 and lines[0].startswith("<3>zflood: bad join code in the "
                                                   "credential (/etc/zflood/family.join)"), lines
    assert not (tmp / "family" / "group.key").exists()


def test_no_group_and_no_code_in_the_credential_exits_78(tmp: Path) -> None:
    creds = tmp / "creds"
    creds.mkdir()
    (creds / "join").write_text("\n")  # the unit's SetCredential= default
    rc, lines = journal_run(tmp / "family", "run", env=systemd_env(
        CREDENTIALS_DIRECTORY=str(creds)))
    assert rc == 78 and lines[-1].startswith("<3>zflood: no join code"), lines


@pytest.mark.parametrize("args", [["run", "--listen", "garbage"], ["run", "--peer"],
                                  ["run", "--frobnicate"]],
                         ids=["bad-endpoint", "missing-value", "unknown-option"])
def test_under_systemd_a_bad_argument_exits_78_not_2(tmp: Path, args: list[str]) -> None:
    """A typo in ExecStart= (or a drop-in) would otherwise be restarted every 5 s forever."""
    member(tmp / "a")
    rc, lines = journal_run(tmp / "a", *args, env=systemd_env())
    assert rc == 78, lines
    assert lines and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1].startswith(("<3>zflood: ", "<3>zflood run: error: ")), lines
    rc, _ = journal_run(tmp / "a", *args)  # from a shell: argparse's 2
    assert rc == 2


def test_stderr_that_is_not_the_journal_gets_no_priority_marks(tmp: Path) -> None:
    """$JOURNAL_STREAM inherited by a process whose stderr went elsewhere: plain lines."""
    member(tmp / "a")
    log = tmp / "plain.log"
    with open(log, "wb") as err:
        p = subprocess.run([*ZFLOOD, "--state", str(tmp / "a"), "run", "--listen", "garbage"],
                           env={**ENV, "JOURNAL_STREAM": "1:2"}, stderr=err, timeout=BRIEF,
                           check=False)
    assert p.returncode == 2
    assert log.read_text().startswith("zflood: "), log.read_text()


# -- the household's sockets -------------------------------------------------------------------


def test_socket_group_opens_the_control_and_pub_sockets_to_that_group(
    tmp: Path, daemons: Daemons
) -> None:
    group = grp.getgrgid(os.getgid())
    member(tmp / "a")
    daemons(tmp / "a", extra=["--socket-group", group.gr_name])
    ends = json.loads((tmp / "a" / "endpoints.json").read_text())
    for endpoint in [*ends["pub"], *ends["control"]]:
        st = os.stat(endpoint.removeprefix("ipc://"))
        assert stat.S_ISSOCK(st.st_mode), endpoint
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, group.gr_gid), endpoint
    # the directory holding them: its group, with the mode it had
    st = os.stat(tmp / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o700, group.gr_gid)


def test_socket_group_that_does_not_exist_exits_78(tmp: Path) -> None:
    member(tmp / "a")
    rc, lines = journal_run(tmp / "a", "run", "--no-discovery", "--listen",
                            "tcp://127.0.0.1:0", "--socket-group", "no-such-group-zf")
    assert rc == 78 and lines[-1].startswith("<3>zflood: --socket-group no-such-group-zf: "
                                             "no such group"), lines


# -- --instance --------------------------------------------------------------------------------


@pytest.fixture
def instances(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """systemd's directories for instances, moved under `tmp` for this process."""
    monkeypatch.setattr(statedir, "INSTANCE_STATE", tmp / "lib")
    monkeypatch.setattr(statedir, "INSTANCE_PRIVATE_STATE", tmp / "private")
    monkeypatch.setattr(statedir, "INSTANCE_RUNTIME", tmp / "run")
    yield tmp


def test_instance_finds_the_daemon_by_its_runtime_directory(
    instances: Path, daemons: Daemons, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zflood --instance family status` and `publish` reach the daemon through the runtime
    directory's sockets, as a member of the zflood group must (it may not read the state)."""
    state, runtime = instances / "private" / "family", instances / "run" / "family"
    member(state)
    (instances / "lib").mkdir()
    (instances / "lib" / "family").symlink_to(state)  # DynamicUser='s layout
    runtime.mkdir(parents=True)
    d = daemons(state, env={"RUNTIME_DIRECTORY": str(runtime)})
    assert statedir.instance_state_dir("family") == instances / "lib" / "family"
    assert (runtime / "control.sock").exists()
    (state / "endpoints.json").unlink()  # not needed: an instance is found by its sockets
    capsys.readouterr()
    assert cli.main(["--instance", "family", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is True and status["node"] == d.node
    assert status["listen"] == d.listen
    assert cli.main(["publish", "--instance", "family", "hello"]) == 0
    assert "offline" not in capsys.readouterr().out
    assert d.has("hello")
    assert d.stop() == 0
    runtime.rmdir()  # systemd removes it when the service stops
    assert cli.main(["--instance", "nosuch", "status"]) == 1
    assert "in no group" in capsys.readouterr().err


def test_instance_after_the_command_and_its_mistakes(tmp: Path) -> None:
    r = subprocess.run([*ZFLOOD, "status", "--instance", "x", "--state", str(tmp)],
                       capture_output=True, text=True, env=ENV, timeout=BRIEF, check=False)
    assert r.returncode == 2 and r.stderr.startswith("zflood: --state and --instance"), r
    for bad in ("../etc", ".hidden", ""):
        r = subprocess.run([*ZFLOOD, "--instance", bad, "status"], capture_output=True,
                           text=True, env=ENV, timeout=BRIEF, check=False)
        assert r.returncode == 1 and "not an instance name" in r.stderr, r
    r = subprocess.run([*ZFLOOD, "--instance", "family", "join", "zf1-x"], capture_output=True,
                       text=True, env=ENV, timeout=BRIEF, check=False)
    assert r.returncode == 2 and "/etc/zflood/family.join" in r.stderr, r


def test_root_does_not_write_into_a_state_directory_of_another_user(tmp: Path) -> None:
    """As an instance's state belongs to its dynamic user, files root made there (a WAL, a
    new group.key) would lock the daemon out: refused in one line, nothing written."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a state directory of another uid)")
    state = tmp / "a"
    member(state)
    before = sorted(p.name for p in state.iterdir())
    os.chown(state, 54321, -1)
    for args in (["publish", "offline note"], ["status"]):
        r = subprocess.run([*ZFLOOD, "--state", str(state), *args], capture_output=True,
                           text=True, env=ENV, timeout=BRIEF, check=False)
        assert r.returncode == 1 and r.stderr == (
            f"zflood: {state} belongs to uid 54321: what root writes there its daemon could "
            "not read. Start the daemon and talk to it, or run this as that user\n"), r
    assert sorted(p.name for p in state.iterdir()) == before


def test_a_damaged_group_key_is_a_configuration_error(tmp: Path) -> None:
    state = tmp / "a"
    member(state)
    (state / "group.key").write_bytes(b"short")
    rc, lines = journal_run(state, "run", "--no-discovery")
    assert rc == 78 and len(lines) == 1, lines
    assert lines[0].startswith(f"<3>zflood: cannot read {state / 'group.key'}: "), lines


def test_log_levels_map_to_syslog_priorities_line_by_line() -> None:
    import logging

    from zflood.systemd import JournalFormatter, priority

    assert [priority(level) for level in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]
    record = logging.LogRecord("zflood.mesh", logging.WARNING, __file__, 1,
                               "first\nsecond", None, None)
    assert JournalFormatter().format(record).splitlines() == [
        "<4>WARNING zflood.mesh: first", "<4>second"]
