"""The chat: `chat send` / `chat log` with the daemon running or not, and the interactive chat
in a real terminal (tmux send-keys / capture-pane) across two daemons."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import ENV, WAIT, Daemons, member, run_cli, short_dir, wait_for

from zflood.apps.chat.lines import printable

ZFLOOD = [sys.executable, "-m", "zflood"]


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_dir("zc") as path:
        yield path


def log(state: Path, *args: str) -> list[dict[str, object]]:
    out = run_cli(state, "chat", "log", "--json", *args)
    return [json.loads(line) for line in out.splitlines()]


def test_send_and_log_work_with_the_daemon_stopped_and_running(tmp: Path) -> None:
    a, b = tmp / "a", tmp / "b"
    code = member(a)
    member(b, code)
    assert "offline" in run_cli(a, "chat", "send", "written offline")
    run_cli(a, "chat", "--room", "kitchen", "send", "milk")
    assert [m["text"] for m in log(a)] == ["written offline"]
    assert [m["text"] for m in log(a, "--room", "kitchen")] == ["milk"]
    with Daemons() as daemons:
        da = daemons(a)
        db = daemons(b, da.listen)
        wait_for(lambda: len(log(b)) == 1, WAIT, "the offline line at b")
        run_cli(b, "chat", "send", "line\nwith a newline")
        wait_for(lambda: len(log(a)) == 2, WAIT, "b's line at a")
        text = run_cli(a, "chat", "log")
        assert text.count("\n") == 2 and "line\\nwith a newline" in text
        assert db.node[:8] in text.splitlines()[1]


def test_log_n_reads_only_the_end(tmp: Path) -> None:
    a = tmp / "a"
    member(a)
    from zflood.apps.chat.lines import note
    from zflood.statedir import load_group, open_node

    group = load_group(a)
    assert group is not None
    node = open_node(a, group)
    with node.batch():
        for i in range(3000):
            node.publish(note("general" if i % 3 else "other", f"line {i}"))
    node.close()
    lines = log(a, "-n", "5")
    assert [m["text"] for m in lines] == [f"line {i}" for i in (2993, 2995, 2996, 2998, 2999)]
    assert run_cli(a, "chat", "log", "-n", "0") == ""


def test_a_line_cannot_send_escapes_to_a_terminal() -> None:
    assert printable("a\x1b[2Jb\rc\x07") == "a\\x1b[2Jb\\x0dc\\x07"


# -- a real terminal -------------------------------------------------------------------------

class Terminal:
    """One tmux server of our own (its own socket), one window running a command."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"zflood-test-{os.getpid()}-{name}"
        self.tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "24",
                  " ".join(shlex.quote(c) for c in ["env", *[f"{k}={v}" for k, v in env.items()
                                                             if k.isidentifier()], *command]))
        self.name = name

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=False)
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def close(self) -> None:
        self.tmux("send-keys", "-t", self.name, "C-d")
        wait_for(lambda: "no server running" in subprocess.run(
            ["tmux", "-L", self.socket, "has-session"], capture_output=True, text=True,
            timeout=10, check=False).stderr or not self.tmux("list-sessions"), WAIT,
            "the chat to quit")
        self.tmux("kill-server")


def test_interactive_chat_across_two_daemons_in_a_real_terminal(tmp: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    a, b = tmp / "a", tmp / "b"
    code = member(a)
    member(b, code)
    env = {**ENV, "XDG_STATE_HOME": str(tmp / "xdg")}
    with Daemons() as daemons:
        da = daemons(a)
        db = daemons(b, da.listen)
        wait_for(lambda: da.linked() and db.linked(), WAIT, "a link")
        run_cli(b, "name", "Bea")
        run_cli(a, "name", "Ann")
        run_cli(b, "chat", "send", "before a opened the chat")
        wait_for(lambda: log(a), WAIT, "history at a")
        term = Terminal("a", [*ZFLOOD, "--state", str(a), "chat"], env)
        try:
            wait_for(lambda: "before a opened the chat" in term.screen(), 3 * WAIT,
                     "the history on a's screen", term.screen)
            wait_for(lambda: "Enter sends" in term.screen(), WAIT, "a's status line",
                     term.screen)
            term.type("hello from a")
            wait_for(lambda: any(m["text"] == "hello from a" for m in log(b)), WAIT,
                     "a's typed line at b", term.screen)
            wait_for(lambda: "Ann: hello from a" in run_cli(b, "chat", "log"), WAIT,
                     "a's typed line shown at b with a's name", term.screen)
            run_cli(b, "chat", "send", "hello back")
            wait_for(lambda: "hello back" in term.screen(), WAIT, "b's line on a's screen",
                     term.screen)
            assert "Bea: hello back" in term.screen()  # the sender's name, from its name note
            # a's daemon goes away: the chat says so and keeps what is typed meanwhile
            da.stop()
            wait_for(lambda: "daemon not running" in term.screen(), 3 * WAIT, "the status line",
                     term.screen)
            term.type("typed while away")
            wait_for(lambda: "1 line(s) waiting" in term.screen(), 3 * WAIT, "the kept line",
                     term.screen)
            da2 = daemons(a, db.listen)
            wait_for(lambda: any(m["text"] == "typed while away" for m in log(b)), 3 * WAIT,
                     "the kept line at b once a is back", term.screen)
            wait_for(lambda: "typed while away" in term.screen(), WAIT,
                     "the kept line on a's own screen", term.screen)
            assert da2.alive()
        finally:
            term.close()
        # what a has seen is remembered: lines that arrive later are marked unread
        run_cli(b, "chat", "send", "while a was not looking")
        wait_for(lambda: any(m["text"] == "while a was not looking" for m in log(a)), WAIT,
                 "the later line at a")
        term = Terminal("a2", [*ZFLOOD, "--state", str(a), "chat"], env)
        try:
            def marked() -> bool:
                lines = term.screen().splitlines()
                marks = [i for i, ln in enumerate(lines) if "unread" in ln]
                later = [i for i, ln in enumerate(lines) if "while a was not looking" in ln]
                return bool(marks and later and marks[0] < later[0])

            wait_for(marked, 3 * WAIT, "the unread marker before the new line", term.screen)
            seen = [i for i, ln in enumerate(term.screen().splitlines())
                    if "typed while away" in ln]
            marks = [i for i, ln in enumerate(term.screen().splitlines()) if "unread" in ln]
            assert seen and seen[0] < marks[0]
        finally:
            term.close()


def test_with_the_daemon_stopped_the_chat_shows_the_history_and_stores_what_is_typed(
    tmp: Path,
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    a = tmp / "a"
    member(a)
    run_cli(a, "chat", "send", "said earlier")
    term = Terminal("off", [*ZFLOOD, "--state", str(a), "chat"],
                    {**ENV, "XDG_STATE_HOME": str(tmp / "xdg")})
    try:
        wait_for(lambda: "said earlier" in term.screen() and "not running" in term.screen(),
                 3 * WAIT, "the history read from the store", term.screen)
        term.type("typed offline")
        wait_for(lambda: "1 line(s) waiting" in term.screen(), 3 * WAIT, "the waiting line",
                 term.screen)
    finally:
        term.close()
    assert [m["text"] for m in log(a)] == ["said earlier", "typed offline"]


def test_the_interactive_chat_without_a_terminal_is_one_line(tmp: Path) -> None:
    a = tmp / "a"
    member(a)
    p = subprocess.run([*ZFLOOD, "--state", str(a), "chat"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=WAIT, env=ENV)
    err = p.stderr.decode()
    assert "Traceback" not in err and p.returncode == 2, err
    assert err.count("\n") == 1 and "needs a terminal" in err and "chat send" in err


def test_chat_send_of_stdin_that_is_not_utf8_is_one_line_and_sends_nothing(tmp: Path) -> None:
    a = tmp / "a"
    member(a)
    p = subprocess.run([*ZFLOOD, "--state", str(a), "chat", "send", "-"], input=b"caf\xe9\xff",
                       capture_output=True, timeout=WAIT, env=ENV)
    err = p.stderr.decode()
    assert p.returncode == 2 and err == "zflood: stdin is not UTF-8 text\n", err
    assert log(a) == []
