"""The mesh's liveness rules with no sockets and a fake clock: two `Liveness` back to back.

`Wire` plays the network: a `SendHi` from X to Y becomes `Y.hi(...)` as from X's DEALER (its
routing id is X's node id, its CURVE key X's), but only while X holds a DEALER to Y (a `Dial`
not yet undone by a `Hang`). Links coming up and going down are recorded per side.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace

import pytest

from zflood.config import Config
from zflood.identity import SigningKey, ed25519_to_x25519_public
from zflood.liveness import (
    HEARING,
    KNOCK,
    NOT_HEARING,
    Action,
    Dial,
    Hang,
    Knock,
    KnockAgain,
    LinkDown,
    LinkUp,
    Liveness,
    SendHi,
    Unknock,
    hi_payload,
    is_curve_key_of,
)

CFG = Config(heartbeat=1.0, peer_timeout=5.0, reconnect=0.5)


@functools.cache
def uid(node: bytes) -> str:
    return ed25519_to_x25519_public(node).hex()


class Side:
    def __init__(self, port: int, config: Config = CFG) -> None:
        self.node = SigningKey().public
        self.port = port
        self.nonce = os.urandom(16)
        self.lv = Liveness(self.node, config)
        self.dealers: dict[bytes, str] = {}  # node -> endpoint of our DEALER
        self.knockers: dict[str, bytes] = {}
        self.up: list[bytes] = []
        self.down: list[tuple[bytes, str, bool]] = []

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


class Wire:
    def __init__(self, *sides: Side) -> None:
        self.sides = {s.endpoint: s for s in sides}
        self.by_node = {s.node: s for s in sides}
        self.delivering = True  # False: a partition, every HI lost

    def do(self, side: Side, actions: list[Action], now: float) -> None:
        queue = [(side, a) for a in actions]
        while queue:
            who, action = queue.pop(0)
            more: list[Action] = []
            match action:
                case Dial(node, endpoint):
                    who.dealers[node] = endpoint
                case Hang(node, _):
                    who.dealers.pop(node, None)
                case SendHi(node, hears):
                    more = self._hi(who, who.dealers.get(node), who.node, hears, now)
                case Knock(endpoint, routing_id):
                    who.knockers[endpoint] = routing_id
                    more = self._hi(who, endpoint, routing_id, KNOCK, now)
                case KnockAgain(endpoint):
                    more = self._hi(who, endpoint, who.knockers[endpoint], KNOCK, now)
                case Unknock(endpoint):
                    del who.knockers[endpoint]
                case LinkUp(node):
                    who.up.append(node)
                case LinkDown(node, reason, bye):
                    who.down.append((node, reason, bye))
                    if bye and node in who.dealers and self.delivering:
                        target = self.sides.get(who.dealers[node])
                        if target is not None:
                            queue += [(target, a) for a in target.lv.bye(now, uid(who.node))]
            target = None if not more else self._target
            if target is not None:
                queue += [(target, a) for a in more]

    def _hi(self, sender: Side, endpoint: str | None, routing_id: bytes, hears: int,
            now: float) -> list[Action]:
        self._target = self.sides.get(endpoint or "")
        if self._target is None or not self.delivering:
            return []
        payload = hi_payload(sender.node, sender.port, sender.nonce, hears)
        return self._target.lv.hi(now, routing_id, uid(sender.node), "127.0.0.1", payload)

    def tick(self, now: float) -> None:
        for side in self.sides.values():
            self.do(side, side.lv.tick(now), now)


def linked(a: Side, b: Side) -> bool:
    return a.lv.is_linked(b.node) and b.lv.is_linked(a.node)


def test_an_announce_links_both_sides_with_no_timer() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    assert linked(a, b) and a.up == [b.node] and b.up == [a.node]
    assert a.lv.links() == [{"node": b.node.hex(), "address": b.endpoint, "state": "connected",
                             "since": None, "heard": None}]
    assert b.dealers == {a.node: a.endpoint}  # b dialled back where a's HI came from


def test_silence_takes_the_link_down_and_a_lost_unannounced_peer_is_dropped() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    wire.delivering = False
    for t in range(1, 7):
        wire.tick(float(t))
    assert not a.lv.is_linked(b.node) and not b.lv.is_linked(a.node)
    assert a.down[0][0] == b.node and "silent" in a.down[0][1]
    assert a.dealers == {b.node: b.endpoint}  # announced: a keeps dialling it
    assert b.dealers == {} and b.lv.links() == []  # it only dialled us back
    wire.delivering = True
    wire.tick(7.0)  # the heartbeat gets through again
    assert linked(a, b)


def test_status_rows_say_since_when_and_when_a_peer_away_was_last_heard() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    wire.tick(1.0)
    (row,) = a.lv.links(1.5)
    assert (row["state"], row["since"], row["heard"]) == ("connected", 1.5, 0.5)
    wire.delivering = False  # b goes away: last heard at 1.0, link down after peer_timeout
    for t in range(2, 40):
        wire.tick(float(t))
    (row,) = a.lv.links(40.0)
    assert row["state"] == "connecting" and row["heard"] == 39.0
    since = row["since"]  # since the link went down, not since it was made
    assert isinstance(since, float) and 30.0 < since < 35.0


def test_bye_closes_at_once_and_a_restart_relinks_at_once() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    wire.do(a, a.lv.close_link(0.1, b.node), 0.1)  # the engine closes: a BYE goes
    assert a.down == [(b.node, "closed by the engine", True)]
    assert b.down == [(a.node, "said goodbye", False)]
    wire.tick(1.0)  # after `reconnect`, the heartbeats relink
    assert linked(a, b)
    b.nonce, b.lv, b.dealers = os.urandom(16), Liveness(b.node, CFG), {}  # kill -9, restart
    wire.do(b, b.lv.announce(1.2, a.node, a.endpoint), 1.2)
    assert a.down[-1] == (b.node, "peer restarted", False)
    assert linked(a, b) and a.up.count(b.node) == 3  # no `reconnect` wait for a new nonce


def test_a_cut_peer_is_ignored_until_healed() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    wire.do(a, a.lv.cut(0.5, b.node), 0.5)
    assert a.down == [(b.node, "cut here", True)] and not b.lv.is_linked(a.node)
    assert a.lv.links() == [{"node": b.node.hex(), "address": b.endpoint, "state": "cut",
                             "since": None, "heard": None}]
    for t in range(1, 10):
        wire.tick(float(t))
    assert not a.lv.is_linked(b.node) and a.dealers == {}
    wire.do(a, a.lv.heal(10.0, b.node), 10.0)
    assert linked(a, b)


def test_a_static_peer_is_knocked_until_it_dials_back_and_ourselves_are_dropped() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.knock(0.0, a.endpoint, b"kself"), 0.0)
    assert a.knockers == {}  # our own knock came back: that knocker is closed
    wire.do(a, a.lv.knock(0.0, b.endpoint, b"kb"), 0.0)
    assert a.lv.knock(0.0, b.endpoint, b"kb2") == []  # idempotent
    assert linked(a, b)
    # the static peer shows once, under its node, not again as an address being dialled
    assert [(r["state"], r["node"]) for r in a.lv.links()] == [("connected", b.node.hex())]


def test_a_hi_naming_a_node_whose_key_it_lacks_is_ignored_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = Side(1), Side(2)
    liar = uid(SigningKey().public)
    with caplog.at_level(logging.INFO, logger="zflood.liveness"):
        for i in range(1000):
            hi = hi_payload(b.node, 2, b.nonce, HEARING)
            assert a.lv.hi(i / 50, b.node, liar, "10.0.0.9", hi) == []
    assert a.lv.links() == [] and a.lv.node_of(liar) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"HI naming {b.node.hex()[:8]} came with key {liar[:12]}: ignored"
    ]


def test_a_hi_flood_is_rate_limited_per_sender_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 4 of issue 8: one member's HIs at 50,000 a second for 2 s."""
    cfg = Config(hi_rate=50.0, hi_burst=100)
    a, b, c = Side(1, cfg), Side(2), Side(3)
    taken = 0
    with caplog.at_level(logging.INFO, logger="zflood.liveness"):
        for i in range(100_000):
            now = i / 50_000
            hi = hi_payload(b.node, 2, b.nonce, NOT_HEARING)
            before = a.lv.counters.his_dropped
            a.lv.hi(now, b.node, uid(b.node), "10.0.0.2", hi)
            taken += a.lv.counters.his_dropped == before
        # another member's HI is taken at once, the flood notwithstanding
        out = a.lv.hi(2.0, c.node, uid(c.node), "10.0.0.3",
                      hi_payload(c.node, 3, c.nonce, NOT_HEARING))
    print(f"HIs taken: {taken} of 100,000; log lines: {len(caplog.records)}")
    assert taken <= 100 + 50 * 2 + 1
    assert a.lv.counters.his_dropped == 100_000 - taken
    assert Dial(c.node, "tcp://10.0.0.3:3") in out
    assert len(caplog.records) <= 3  # the first, b's dial-back notices, one per kind


def test_the_hi_rate_table_is_bounded() -> None:
    a = Side(1, Config(hi_senders=64))
    for i in range(5000):
        node = SigningKey().public if i % 500 == 0 else os.urandom(32)
        a.lv.hi(i / 1000, node, uid(node) if i % 500 == 0 else os.urandom(32).hex(),
                "10.0.0.1", hi_payload(node, 9, bytes(16), NOT_HEARING))
    assert a.lv.stats()["hi_senders"] <= 64


def test_thousands_of_fake_records_hold_at_most_the_dial_slots() -> None:
    """Item 5 of issue 8: records carrying the public group id, nobody answering."""
    cfg = Config(dial_slots=16, max_candidates=1024)
    a = Side(1, cfg)
    dealers: set[bytes] = set()
    most = 0

    def apply(actions: list[Action]) -> None:
        nonlocal most
        for action in actions:
            if isinstance(action, Dial):
                dealers.add(action.node)
            elif isinstance(action, Hang):
                dealers.discard(action.node)
        most = max(most, len(dealers))

    for i in range(5000):
        apply(a.lv.announce(i / 5000, os.urandom(32), f"tcp://10.9.{i // 250}.{i % 250}:4077"))
    for t in range(400):  # 100 s of ticks
        apply(a.lv.tick(1.0 + t / 4))
    stats = a.lv.stats()
    print(stats)
    assert most <= 16 and stats["dealers"] <= 16
    assert stats["records_waiting"] + stats["records_on_trial"] <= 1024
    assert stats["records_forgotten"] >= 5000 - 1024
    assert len(a.lv.links()) <= 16  # status shows what is dialled, not the whole flood


def test_a_record_that_never_answers_backs_off_then_is_forgotten() -> None:
    cfg = Config(dial_trial=3.0, dial_backoff=1.0, dial_backoff_max=4.0, dial_attempts=4)
    a = Side(1, cfg)
    ghost = os.urandom(32)
    dials: list[float] = []
    hangs: list[float] = []
    t = 0.0
    actions = a.lv.announce(t, ghost, "tcp://10.0.0.7:4077")
    while t < 60:
        dials += [t for x in actions if isinstance(x, Dial)]
        hangs += [t for x in actions if isinstance(x, Hang)]
        t += 0.25
        actions = a.lv.tick(t)
    # tries at 0, then 3 s trials with backoffs of 1, 2, 4 s between them
    assert dials == [0.0, 4.0, 9.0, 16.0]
    assert hangs == [3.0, 7.0, 12.0, 19.0]
    assert a.lv.stats()["peers"] == 0 and a.lv.counters.records_forgotten == 1


def test_a_real_member_announced_after_thousands_of_fakes_is_dialled_soon() -> None:
    cfg = Config(dial_slots=16, dial_trial=3.0)
    a, b = Side(1, cfg), Side(2)
    wire = Wire(a, b)
    for i in range(5000):
        wire.do(a, a.lv.announce(0.0, os.urandom(32), f"tcp://10.9.{i // 250}.{i % 250}:1"), 0)
    wire.do(a, a.lv.announce(0.5, b.node, b.endpoint), 0.5)  # every slot busy
    t = 0.5
    while not linked(a, b):
        t += 0.25
        wire.tick(t)
        assert t < 0.5 + cfg.dial_trial + 0.5, "the real member waited behind the fakes"
    print(f"linked at t={t}")


def test_a_member_that_says_hi_is_dialled_back_whatever_the_fakes() -> None:
    a, b = Side(1, Config(dial_slots=4)), Side(2)
    wire = Wire(a, b)
    for i in range(100):
        wire.do(a, a.lv.announce(0.0, os.urandom(32), f"tcp://10.9.0.{i}:1"), 0.0)
    wire.do(b, b.lv.announce(0.1, a.node, a.endpoint), 0.1)  # b dials a: a dials back
    assert linked(a, b)
    for t in range(1, 200):  # a proven member is never put on trial
        wire.tick(t / 2)
    assert linked(a, b)


def test_forget_drops_a_record_but_not_a_live_link() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    ghost = os.urandom(32)
    wire.do(a, a.lv.announce(0.0, ghost, "tcp://10.0.0.1:9"), 0.0)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    wire.do(a, a.lv.forget(0.1, ghost), 0.1)
    wire.do(a, a.lv.forget(0.1, b.node), 0.1)
    assert ghost not in a.dealers and linked(a, b)


def test_config_refuses_zero_slots() -> None:
    with pytest.raises(ValueError):
        replace(CFG, dial_slots=0)


def test_the_curve_key_check_agrees_with_the_conversion() -> None:
    for _ in range(50):
        node = SigningKey().public
        assert is_curve_key_of(uid(node), node)
        assert not is_curve_key_of(uid(SigningKey().public), node)
        assert not is_curve_key_of(uid(node), node[:31] + bytes([node[31] ^ 1]))
    assert not is_curve_key_of("not hex", node) and not is_curve_key_of("00" * 32, bytes(31))


def test_a_member_with_a_new_session_every_hi_costs_one_relink_per_peer_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member gone bad announces a new incarnation (nonce) in every HI, 100 a second for 10 s:
    each restart would cost a link, the engine's hello and log lines."""
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    with caplog.at_level(logging.INFO, logger="zflood.liveness"):
        for i in range(1, 1000):
            b.nonce = os.urandom(16)
            wire.do(b, [SendHi(a.node, HEARING)], i / 100)
    restarts = [d for d in a.down if d[1] == "peer restarted"]
    print(f"{len(restarts)} relinks; log lines: {[r.getMessage() for r in caplog.records]}")
    assert 1 <= len(restarts) <= 10 / CFG.peer_timeout + 1
    assert len(caplog.records) <= 2  # the first refusal, the HI rate


def test_a_peer_that_restarts_twice_in_a_row_is_relinked_after_peer_timeout() -> None:
    a, b = Side(1), Side(2)
    wire = Wire(a, b)
    wire.do(a, a.lv.announce(0.0, b.node, b.endpoint), 0.0)
    for t in (1.0, 2.0):  # two crashes and restarts, a second apart
        b.nonce, b.lv, b.dealers = os.urandom(16), Liveness(b.node, CFG), {}
        wire.do(b, b.lv.announce(t, a.node, a.endpoint), t)
    assert not b.lv.is_linked(a.node)  # the second incarnation waits
    t = 2.0
    while not linked(a, b):
        t += 0.25
        wire.tick(t)
        assert t <= 2.0 + 2 * CFG.peer_timeout, "a restarted peer was never relinked"
    print(f"relinked at t={t}")


def test_node_ids_minted_by_one_member_are_taken_up_to_members_per_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A code holder minting node ids (each a CURVE key of its own) from one address: at most
    members_per_host are dialled back, the rest are dropped (logged once, counted) and refused
    at the handshake, a member at another address is taken at once, and a minted id that
    goes silent frees its place."""
    cfg = replace(CFG, members_per_host=4)
    a = Side(1, cfg)
    minted = [SigningKey().public for _ in range(50)]
    dialled = []
    with caplog.at_level(logging.INFO, logger="zflood.liveness"):
        for i, node in enumerate(minted):
            hi = hi_payload(node, 9000 + i, bytes(16), NOT_HEARING)
            out = a.lv.hi(0.1, node, uid(node), "10.0.0.9", hi)
            dialled += [x.node for x in out if isinstance(x, Dial)]
    assert dialled == minted[:4]
    assert a.lv.counters.members_refused == 46
    assert len([r for r in caplog.records if "members at 10.0.0.9" in r.getMessage()]) == 1
    assert not a.lv.admits(uid(minted[10]), "10.0.0.9")  # ZAP refuses the rest's handshakes
    assert a.lv.admits(uid(minted[0]), "10.0.0.9")  # those taken keep theirs
    honest = SigningKey().public
    assert a.lv.admits(uid(honest), "10.0.0.2")
    out = a.lv.hi(0.2, honest, uid(honest), "10.0.0.2", hi_payload(honest, 1, bytes(16), 0))
    assert Dial(honest, "tcp://10.0.0.2:1") in out
    # the minted ones go silent (the honest one keeps its HIs coming): their places free up
    t = 0.2
    while t < 0.2 + cfg.peer_timeout + 1:
        t += 0.5
        a.lv.hi(t, honest, uid(honest), "10.0.0.2", hi_payload(honest, 1, bytes(16), 0))
        a.lv.tick(t)
    assert a.lv.admits(uid(minted[10]), "10.0.0.9")
    out = a.lv.hi(t, minted[10], uid(minted[10]), "10.0.0.9",
                  hi_payload(minted[10], 9010, bytes(16), NOT_HEARING))
    assert Dial(minted[10], "tcp://10.0.0.9:9010") in out
