"""A full disk: real daemons, a receiver whose state directory is a 20 MiB tmpfs.

It stops storing with one warning, keeps its link, tells publishers in one line and says so
in `status`; once space is freed it takes every note by itself. The WAL stays bounded. Needs
root (to mount the tmpfs); skipped elsewhere, with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import (
    ENV,
    WAIT,
    ZFLOOD,
    Daemons,
    daemons_fixture,
    log_tail,
    member,
    tmp_fixture,
    wait_for,
)

from zflood.config import DEFAULT
from zflood.errors import LocalError
from zflood.identity import Group
from zflood.statedir import load_group, open_node

MiB = 1024 * 1024
NOTES = 6 * 1024  # 12 MiB of 2 KiB notes: the case
# on a 20 MiB disk the WAL's bound is its least (an eighth of the free space is less), plus
# one transaction past it
WAL_BOUND = DEFAULT.wal_min + 2 * MiB

tmp = tmp_fixture("zdisk")
daemons = daemons_fixture()


@pytest.fixture
def small_disk(tmp: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a 20 MiB tmpfs needs root")
    disk = tmp / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30,
                       check=False)


def fill(path: Path, leave: int) -> None:
    """A file that leaves `leave` bytes free on the disk holding it."""
    st = os.statvfs(path.parent)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def test_a_receiver_on_a_full_disk_pauses_says_so_and_takes_every_note_once_freed(
    tmp: Path, small_disk: Path, daemons: Daemons
) -> None:
    a, b = tmp / "a", small_disk / "b"
    member(b, member(a))
    group = load_group(a)
    assert isinstance(group, Group)
    node = open_node(a, group)
    for i in range(0, NOTES, 512):
        node.publish_many([f"{i + j:06d} " + os.urandom(1021).hex() for j in range(512)])
    node.close()
    filler = small_disk / "filler"
    fill(filler, 6 * MiB)
    sender = daemons(a)
    receiver = daemons(b, sender.listen)
    wal = b / "node.db-wal"
    biggest = [0]

    def status() -> dict[str, object]:
        if wal.exists():
            biggest[0] = max(biggest[0], wal.stat().st_size)
        s: dict[str, object] = receiver.client.status()
        return s

    wait_for(lambda: status()["store"]["storing"] is False, 30,  # type: ignore[index]
             "the receiver to stop storing", lambda: log_tail(receiver.log))
    held = status()["notes"]
    assert isinstance(held, int) and 0 < held < NOTES
    assert "disk is full" in status()["store"]["error"]  # type: ignore[index]
    with pytest.raises(LocalError, match="the disk is full") as refused:
        receiver.client.publish("while full")
    assert "\n" not in str(refused.value)
    assert sender.node in receiver.linked()  # the link stays: it is not the sender's fault
    filler.unlink()
    wait_for(lambda: status()["notes"] == NOTES, 60, "every note after space was freed",
             lambda: log_tail(receiver.log))
    assert status()["store"]["storing"] is True  # type: ignore[index]
    assert receiver.client.publish("after")["seqno"] == 0
    assert biggest[0] <= WAL_BOUND, biggest[0]
    text = receiver.log.read_text()
    assert text.count("disk is full") == 1, log_tail(receiver.log)
    assert "Traceback" not in text and "closing channel" not in text
    assert receiver.stop() == 0
    assert not wal.exists() or wal.stat().st_size == 0  # a clean stop merges the WAL

    # offline: one line, nothing written, and it works again once there is room
    fill(filler, 0)
    done = subprocess.run([*ZFLOOD, "--state", str(b), "publish", "x" * 60_000],
                          capture_output=True, text=True, timeout=WAIT * 3, env=ENV,
                          check=False)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and "disk is full" in done.stderr, done.stderr
    filler.unlink()
    done = subprocess.run([*ZFLOOD, "--state", str(b), "publish", "again"],
                          capture_output=True, text=True, timeout=WAIT * 3, env=ENV,
                          check=False)
    assert done.returncode == 0 and "published #1" in done.stdout, done
