"""A real daemon catching up on a long history: `status` shows the sync's progress (notes to
go, rate, time left) and what the peer holds that it lacks, and the daemon logs a progress line
every progress_interval until it is in sync.

The catching-up daemon runs in this process (zflood.daemon.Daemon, with a short
progress_interval and small batches, so a sync of 20,000 notes lasts several intervals); the
peer holding the history is a real `zflood run` process, stopped by PID by the fixture.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from daemons import WAIT, daemons_fixture, member, tmp_fixture

from zflood.config import Config
from zflood.daemon import Daemon, Options
from zflood.members import name_note
from zflood.statedir import load_group, open_node

tmp = tmp_fixture("zs")
daemons = daemons_fixture()
NOTES = 20_000


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_long_sync_shows_its_progress_in_status_and_in_the_log(tmp: Path, daemons: Any) -> None:
    code = member(tmp / "a")
    member(tmp / "b", code)
    group = load_group(tmp / "a")
    assert group is not None
    node = open_node(tmp / "a", group)
    try:
        node.publish(name_note("big", 0.0))
        for i in range(0, NOTES, 1000):
            node.publish_many([f"note {j}" for j in range(i, i + 1000)])
    finally:
        node.close()
    a = daemons(tmp / "a")
    a_id = a.client.status()["node"]

    config = Config(progress_interval=0.1, heartbeat=0.1, batch_notes=16, window_batches=1)
    b = Daemon(tmp / "b", Options(listen="tcp://127.0.0.1:0", peers=[a.listen],
                                  discovery=False, config=config))
    lines = Lines()
    log = logging.getLogger("zflood.daemon")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        task = asyncio.create_task(b.run())
        try:
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, f"no sync seen; log: {lines.lines[-5:]}"
                assert not task.done(), task
                if b.local is not None and b.mesh is not None and b.listen:
                    st = b.status()
                    seen.append(st)
                    if st["notes"] == NOTES + 1 and any(
                            "in sync" in line for line in lines.lines):
                        return
                await asyncio.sleep(0.05)
        finally:
            b.stop()
            await asyncio.wait_for(task, WAIT)

    try:
        asyncio.run(main())
    finally:
        log.removeHandler(lines)
        log.setLevel(old_level)

    during = [s for s in seen if s["sync"]["lacking"] and s["sync"]["rate"]]
    assert during, "status never showed the sync under way"
    st = during[len(during) // 2]
    sync = st["sync"]
    assert sync["held"] + sync["lacking"] == NOTES + 1  # a's notes and its name
    assert sync["rate"] > 0 and sync["eta"] > 0
    (peer,) = [p for p in st["peers"] if p["node"] == a_id]
    assert peer["name"] == "big"  # its name is its first note: it came first
    assert peer["we_lack"] == sync["lacking"] and peer["they_lack"] == 0
    catching = [line for line in lines.lines if line.startswith("catching up: ")]
    assert catching, f"no progress line was logged: {lines.lines}"
    assert "notes to go" in catching[0] and "notes/s" in catching[-1] and "left" in catching[-1]
    assert any(line.startswith("in sync with the linked peers") for line in lines.lines)
    last = seen[-1]
    assert last["sync"]["lacking"] == 0
    assert {m["origin"]: m["name"] for m in last["members"]}[a_id] == "big"
    print(f"\n{len(catching)} progress lines, e.g. {catching[len(catching) // 2]!r}")
