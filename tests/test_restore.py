"""A restored backup with real daemons (the issue's case): copy a member's state directory,
let it publish 5 more, stop it, restore the copy and publish, then run: every member ends
with the same logs, every body written on that machine is held once by each, and `status`
shows the fork where the branches split."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest
from daemons import (
    Daemon,
    Daemons,
    all_notes,
    daemons_fixture,
    member,
    run_cli,
    tmp_fixture,
    wait_for,
)

tmp = tmp_fixture("zr")
daemons = daemons_fixture()
WAIT = 20.0  # bound on the group's healing over loopback (it takes about a second)


def heads(d: Daemon) -> dict[str, int]:
    """How far it holds each origin's log (the chains themselves are compared in the
    simulator's runs, tests/test_forks.py)."""
    held: dict[str, int] = d.client.status()["heads"]
    return held


def bodies(d: Daemon) -> collections.Counter[object]:
    return collections.Counter(n["body"] for n in all_notes(d.client))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("run", range(2))
def test_a_restored_member_that_published_heals_and_nothing_is_lost(
    tmp: Path, daemons: Daemons, run: int, online: bool
) -> None:
    a, b, c = tmp / "a", tmp / "b", tmp / "c"
    code = member(a)
    member(b, code)
    member(c, code)
    db = daemons(b)
    dc = daemons(c, db.listen)
    da = daemons(a, db.listen, dc.listen)
    written = [f"a {run} {i}" for i in range(3)]
    for body in written:
        da.client.publish(body)
    dc.client.publish(f"c {run}")
    wait_for(lambda: all(bodies(d)[written[-1]] for d in (db, dc)), WAIT, "a's first notes")
    da.stop()
    shutil.copytree(a, tmp / "backup")
    da = daemons(a, db.listen, dc.listen)
    for i in range(5):
        written.append(f"a {run} more {i}")
        da.client.publish(written[-1])
    wait_for(lambda: all(bodies(d)[written[-1]] for d in (db, dc)), WAIT, "a's 5 more")
    split = 3  # the backup held a's notes 0..2
    da.stop()
    shutil.rmtree(a)
    shutil.copytree(tmp / "backup", a)
    if online:
        da = daemons(a, db.listen, dc.listen)
        for i in range(2):  # as soon as the control socket answers
            written.append(f"a {run} restored {i}")
            da.client.publish(written[-1])
    else:
        for i in range(2):
            written.append(f"a {run} restored {i}")
            assert "offline" in run_cli(a, "publish", written[-1])
        da = daemons(a, db.listen, dc.listen)
    members = (da, db, dc)

    def healed() -> bool:
        held = [bodies(d) for d in members]
        return all(all(h[w] >= 1 for w in written) for h in held) and \
            held[0] == held[1] == held[2] and heads(da) == heads(db) == heads(dc)

    wait_for(healed, WAIT, "the group to heal",
             lambda: "\n".join(f"{heads(d)} {bodies(d)}" for d in members))
    for d in members:
        held = bodies(d)
        assert all(held[w] == 1 for w in written), held  # each body once, nothing lost
        assert max(held.values()) == 1, held
        # A member that never saw the losing branch has no fork to show; nor has anyone if
        # the restored member caught up before its first publish (online).
        for fork in d.client.status()["forks"]:
            assert fork["origin"] == da.node and fork["seqno"] == split
            assert fork["kept"] != fork["lost"]
    if online and not da.client.status()["forks"]:
        return
    [fork] = da.client.status()["forks"]
    assert fork["ours"] and fork["published_again"] >= 1  # online, it may catch up midway
    da.stop()
    text = run_cli(a, "status")
    assert f"this node split at #{split}: kept {fork['kept'][:8]}" in text
    assert "published again as" in text
    assert json.loads(run_cli(a, "status", "--json"))["forks"][0]["seqno"] == split
    assert sum(
        "forked at seqno" in line for line in da.log.read_text().splitlines()
    ) == 1  # one warning
