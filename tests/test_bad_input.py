"""Bad input from a peer: random and mutated frames through a Channel. The node survives,
closes that channel when the frame is invalid, and its store is unchanged."""

from __future__ import annotations

import cbor2
import pytest
from channels import ManualChannel
from hypothesis import given, settings
from hypothesis import strategies as st

from zflood import Config, Node, RemoteProtocolError, wire
from zflood.identity import SigningKey

KEY = SigningKey(b"\x01" * 32)  # a fixed peer, so examples replay exactly


def valid_frames() -> list[bytes]:
    """Every kind of frame a real peer sends, taken from a real exchange."""
    a, b = Node(), Node()
    for i in range(3):
        b.publish(f"note {i}")
    ca, cb = ManualChannel(), ManualChannel()
    a.connect(ca)
    b.connect(cb)
    done = [0, 0]
    while done != [len(ca.sent), len(cb.sent)]:  # pump both ways until nothing new
        new_a, new_b = ca.sent[done[0]:], cb.sent[done[1]:]
        done = [len(ca.sent), len(cb.sent)]
        for frame in new_a:
            cb.feed(frame)
        for frame in new_b:
            ca.feed(frame)
    b.publish(b"\x00\x01 bytes")
    frames = ca.sent + cb.sent
    assert {type(wire.decode(f)) for f in frames} >= {wire.Hello, wire.Want, wire.Notes}
    return [*frames, wire.encode(wire.Heads({KEY.public: 3})), wire.encode(wire.Links(()))]


VALID = valid_frames()


def victim() -> tuple[Node, ManualChannel, dict[bytes, int], int]:
    node = Node()
    node.publish("mine")
    ch = ManualChannel()
    node.connect(ch)
    ch.feed(wire.encode(wire.Hello(wire.VERSION, b"", KEY.public, {}, {}, (), True)))
    assert not ch.closed
    return node, ch, node.heads, node.count


def mutate(frame: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


def check_survives(frame: bytes) -> None:
    node, ch, heads, count = victim()
    try:
        msg = wire.decode(frame)
    except RemoteProtocolError:
        msg = None
    ch.feed(frame)  # must not raise, whatever the frame
    if msg is None:
        assert ch.closed, "an undecodable frame must close the channel"
    if ch.closed or not isinstance(msg, wire.Notes):
        assert node.heads == heads and node.count == count, "the store changed"
    node.publish("still works")
    assert node.count == node.heads[node.id] + sum(
        c for o, c in node.heads.items() if o != node.id
    )


@settings(max_examples=400, deadline=None)
@given(frame=st.binary(max_size=300))
def test_random_bytes(frame: bytes) -> None:
    check_survives(frame)


@settings(max_examples=600, deadline=None)
@given(index=st.integers(0, len(VALID) - 1), data=st.data())
def test_mutated_valid_frames(index: int, data: st.DataObject) -> None:
    check_survives(mutate(VALID[index], data))


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=40)
    | st.text(max_size=10) | st.floats(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.binary(max_size=33), inner,
                                                                  max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(kind=st.integers(-1, 6), fields=st.lists(cbor_values, max_size=8))
def test_well_formed_cbor_with_wrong_shapes(kind: int, fields: list[object]) -> None:
    check_survives(cbor2.dumps([kind, *fields]))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # an array claiming 2**64 items
        b"\x81" * 100_000 + b"\x00",  # nested deeper than any decoder's stack
        cbor2.dumps([1, {KEY.public: 2**64}]),  # a count out of range
        cbor2.dumps([3, KEY.public, 5, 5]),  # an empty range
        cbor2.dumps([1, {}]) + b"\x00",  # trailing bytes
        b"\xd9\x01\x02\x80",  # a CBOR tag
    ],
)
def test_known_bad_frames(frame: bytes) -> None:
    check_survives(frame)


def test_oversized_frame_is_refused_before_parsing() -> None:
    config = Config()
    node = Node(config=config)
    ch = ManualChannel()
    node.connect(ch)
    ch.feed(b"\x00" * (config.max_frame + 1))
    assert ch.closed
