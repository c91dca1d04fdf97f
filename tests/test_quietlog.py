"""QuietLog: a repeated fault is logged once, then counted; memory stays bounded."""

from __future__ import annotations

import logging

import pytest

from zflood.quietlog import QuietLog


def test_first_fault_logged_repeats_counted_then_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = QuietLog(logging.getLogger("zflood.test.quiet"), period=10.0)
    with caplog.at_level(logging.INFO, logger="zflood.test.quiet"):
        assert q.fault(0.0, "bad HI", "10.0.0.1", "bad HI from %s", "10.0.0.1")
        for i in range(1000):
            assert not q.fault(1.0 + i / 1000, "bad HI", "10.0.0.1", "bad HI from %s", "10.0.0.1")
        assert len(caplog.records) == 1
        q.flush(10.5)
    assert len(caplog.records) == 2
    assert "1000 repeated faults" in caplog.records[1].getMessage()
    assert "bad HI: 1000" in caplog.records[1].getMessage()


def test_a_quiet_source_is_forgotten_and_logged_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = QuietLog(logging.getLogger("zflood.test.quiet2"), period=10.0)
    with caplog.at_level(logging.INFO, logger="zflood.test.quiet2"):
        q.fault(0.0, "k", "a", "fault a")
        q.flush(10.0)  # nothing repeated: no summary, and "a" is forgotten
        assert q.keys == 0
        assert q.fault(11.0, "k", "a", "fault a")
    assert [r.getMessage() for r in caplog.records] == ["fault a", "fault a"]


def test_many_sources_share_one_key_past_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    q = QuietLog(logging.getLogger("zflood.test.quiet3"), period=10.0, max_keys=8)
    with caplog.at_level(logging.INFO, logger="zflood.test.quiet3"):
        for i in range(10_000):
            q.fault(0.0, "fake", f"source {i}", "fake from %d", i)
    assert q.keys <= 9
    assert len(caplog.records) == 9  # 8 sources, then one for all the others
