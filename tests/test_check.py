"""`zflood check`, offline and through a running daemon (which repairs from a peer), and a
store that lost its identity: real processes, real SQLite files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from daemons import (
    ENV,
    WAIT,
    ZFLOOD,
    Daemon,
    Daemons,
    daemons_fixture,
    member,
    tmp_fixture,
    wait_for,
)

from zflood.identity import Group
from zflood.statedir import load_group, open_node

tmp = tmp_fixture("zk")
daemons = daemons_fixture()


def zflood(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ZFLOOD, "--state", str(state), *args], capture_output=True,
                          text=True, timeout=WAIT * 3, env=ENV, check=False)


def publish(state: Path, *bodies: str) -> str:
    """Publish offline, in-process; returns the node id (hex)."""
    group = load_group(state)
    assert isinstance(group, Group)
    node = open_node(state, group)
    try:
        for body in bodies:
            node.publish(body)
        return node.id.hex()
    finally:
        node.close()


def damage(state: Path, text: bytes) -> None:
    """Flip one bit of `text` where node.db holds it (the daemon stopped: no WAL)."""
    path = state / "node.db"
    data = bytearray(path.read_bytes())
    data[data.index(text)] ^= 0x02
    path.write_bytes(bytes(data))


def synced(a: Path, b: Path, daemons: Daemons) -> tuple[Daemon, Daemon]:
    """Members `a` (holding 30 notes, "hello world 0".."29") and `b`, their daemons running
    and `b` holding all of `a`'s notes."""
    member(b, member(a))
    publish(a, *[f"hello world {i}" for i in range(30)])
    first = daemons(a)
    second = daemons(b, first.listen)
    wait_for(lambda: len(second.held()) == 30, WAIT, "b to hold a's notes")
    return first, second


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done
    lines = done.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("zflood: "), done.stderr
    return lines[0]


def test_check_offline_says_the_store_is_good_or_what_is_damaged(tmp: Path) -> None:
    a = tmp / "a"
    member(a)
    node = publish(a, *[f"hello world {i}" for i in range(50)])
    done = zflood(a, "check")
    assert done.returncode == 0 and "store OK: 50 notes" in done.stdout, done
    assert "checking 50 of 50 notes" in done.stderr  # the progress line
    damage(a, b"hello world 17")
    done = zflood(a, "check")
    assert done.returncode == 1, done
    assert f"damaged: 1 note of origin {node[:16]} fails its hash" in done.stdout
    assert ": 17" in done.stdout
    assert "start the daemon" in done.stdout
    assert "Traceback" not in done.stderr


def test_check_through_the_daemon_finds_damage_and_the_daemon_repairs_it_from_a_peer(
    tmp: Path, daemons: Daemons
) -> None:
    a, b = tmp / "a", tmp / "b"
    first, second = synced(a, b, daemons)
    assert first.stop() == 0
    damage(a, b"hello world 7")
    again = daemons(a, second.listen)
    done = zflood(a, "check")
    assert done.returncode == 1 and "note of origin" in done.stdout, done
    assert "the daemon is fetching them again" in done.stdout
    wait_for(lambda: not again.client.status()["store"]["damaged"], WAIT,
             "the damaged note to be repaired")
    assert {body for _, _, body in again.held()} == {f"hello world {i}" for i in range(30)}
    done = zflood(a, "check")
    assert done.returncode == 0 and "store OK: 30 notes" in done.stdout, done


def test_a_store_that_lost_its_identity_is_refused_unless_a_new_one_is_asked_for(
    tmp: Path, daemons: Daemons
) -> None:
    a = tmp / "a"
    member(a)
    old = publish(a, "before")
    (a / "node.db").write_bytes(b"")  # truncated to 0
    for args in (("run", "--no-discovery", "--listen", "tcp://127.0.0.1:0"),
                 ("publish", "lost"), ("status",)):
        line = one_line_error(zflood(a, *args))
        assert "identity" in line and "--new-identity" in line, line
    usage = " ".join(zflood(a, "run", "--help").stdout.split())
    assert "--new-identity if node.db was lost" in usage, usage
    (a / "node.db").unlink()  # removed
    done = zflood(a, "run", "--no-discovery", "--listen", "tcp://127.0.0.1:0")
    assert done.returncode == 78, done  # a configuration error: systemd does not restart it
    fresh = daemons(a, extra=["--new-identity"])
    assert fresh.node != old
    assert fresh.client.publish("a new member")["seqno"] == 0


def test_a_follower_that_read_past_a_damaged_note_gets_it_once_it_is_repaired(
    tmp: Path, daemons: Daemons
) -> None:
    """Catching up while a note is damaged: the read skips it and says so; once it is
    fetched again from a peer it reaches the follower (late, out of order), once."""
    a, b = tmp / "a", tmp / "b"
    first, second = synced(a, b, daemons)
    assert first.stop() == 0 and second.stop() == 0
    damage(a, b"hello world 7")
    alone = daemons(a)  # no peer to repair from yet
    follow = alone.client.follow(0, timeout=WAIT)
    history = [next(follow)["body"] for _ in range(29)]
    assert "hello world 7" not in history and len(set(history)) == 29
    daemons(b, alone.listen)  # now a peer holds it: a fetches it again
    late = next(follow)
    assert late["body"] == "hello world 7" and late["seqno"] == 7
    alone.client.publish("after")
    assert next(follow)["body"] == "after"  # and nothing twice
    follow.close()


def test_a_follower_at_a_damaged_last_note_waits_without_asking_again_and_again(
    tmp: Path, daemons: Daemons
) -> None:
    """The newest note is damaged and no peer holds it: a read there finds nothing to show,
    and its reply must move the follower past it, or the follower would ask at once again,
    in a tight loop, until a new note came."""
    a = tmp / "a"
    member(a)
    publish(a, *[f"hello world {i}" for i in range(10)])
    damage(a, b"hello world 9")
    alone = daemons(a)
    before = alone.client.status()["local"]["requests"]
    got = [n["body"] for n in alone.client.follow(0, timeout=1.0)]
    assert got == [f"hello world {i}" for i in range(9)]
    asked = alone.client.status()["local"]["requests"] - before
    print(f"\nreads in 1 s of following: {asked}")
    assert asked < 50, asked
