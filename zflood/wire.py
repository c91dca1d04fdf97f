"""CBOR frames: the engine's five messages, built, encoded, decoded and validated here only.

A frame is a CBOR array whose first item names the message. Every message is a small frozen
dataclass that validates itself when built, so a decoded message is a valid one; anything
else becomes one `RemoteProtocolError` raised from one place (`decode`). Oversized frames are
refused before any parsing. The limits come from `Config`.

    HELLO  [0, version, group, node, heads, tips, links, seen]  first frame on a channel
    HEADS  [1, heads, tips]                            "I now hold these counts"
    LINKS  [2, links]                                  "I am linked to these origins"
    WANT   [3, origin, start, end]                     "send me notes [start, end)"
    NOTES  [4, origin, start, prev, bodies, sig]       notes start.., sig closes the last

`heads` maps an origin id to how many of its notes the sender holds (a count, so the next
seqno); `tips` maps it to the id of the last one, so two chains that forked are noticed even
at equal length. Heads and tips are paged: a HELLO carries at most `heads_page` origins and
HEADS frames carry the rest (with their tips, right after a hello; without, as later
announcements), so no message outgrows the limit every receiver enforces, however many
origins a group holds. `prev` is the id of the note before `start`: with it a batch proves itself,
and a validly signed batch that does not continue our chain is a fork, not a forgery. `sig`
is the origin's signature of the last note's id, which vouches for the whole chain.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2

from .config import DEFAULT, Config
from .errors import RemoteProtocolError
from .identity import GROUP_ID_SIZE, ID_SIZE, SIG_SIZE

VERSION = 2  # 2: heads paged, HEADS carries tips
MAX_SEQNO = 2**62  # far beyond any log; keeps every count a small CBOR integer
#: An origin publishes a body again after a fork wrapped in at most this many bytes more
#: (log.again), so a peer takes a body of max_body published again.
AGAIN_OVERHEAD = 64

Body = str | bytes


def _check(ok: bool, why: str) -> None:
    if not ok:
        raise RemoteProtocolError(why)


def _is_int(v: object, low: int = 0, high: int = MAX_SEQNO) -> bool:
    return type(v) is int and low <= v <= high


def _is_id(v: object) -> bool:
    return type(v) is bytes and len(v) == ID_SIZE


def _heads(v: object, limit: int) -> dict[bytes, int]:
    _check(type(v) is dict and len(v) <= limit, "heads must be a map of at most heads_page")
    assert isinstance(v, dict)
    for origin, count in v.items():
        _check(_is_id(origin) and _is_int(count), "heads must map 32-byte ids to counts")
    return v


def _tips(v: object, limit: int) -> dict[bytes, bytes]:
    _check(type(v) is dict and len(v) <= limit, "tips must be a map of at most heads_page")
    assert isinstance(v, dict)
    _check(all(_is_id(k) and _is_id(t) for k, t in v.items()), "tips map ids to ids")
    return v


def _links(v: object, limit: int) -> tuple[bytes, ...]:
    _check(isinstance(v, list | tuple), "links must be a list of ids")
    assert isinstance(v, list | tuple)
    _check(len(v) <= limit and all(_is_id(x) for x in v), "links must be a list of 32-byte ids")
    return tuple(v)


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[int] = 0
    version: int
    group: bytes
    node: bytes
    heads: dict[bytes, int]
    tips: dict[bytes, bytes]
    links: tuple[bytes, ...] = ()
    seen: bool = False  # the sender has received our hello on this channel

    def __post_init__(self) -> None:
        _check(_is_int(self.version, 0, 2**16), "bad version")
        _check(type(self.group) is bytes and len(self.group) in (0, GROUP_ID_SIZE), "bad group")
        _check(_is_id(self.node), "bad node id")
        _check(type(self.seen) is bool, "bad seen flag")

    def fields(self) -> list[Any]:
        return [self.version, self.group, self.node, self.heads, self.tips, list(self.links),
                self.seen]


@dataclass(frozen=True, slots=True)
class Heads:
    TYPE: ClassVar[int] = 1
    heads: dict[bytes, int]
    tips: dict[bytes, bytes] = field(default_factory=dict)  # for some of those origins

    def fields(self) -> list[Any]:
        return [self.heads, self.tips]


@dataclass(frozen=True, slots=True)
class Links:
    TYPE: ClassVar[int] = 2
    links: tuple[bytes, ...]

    def fields(self) -> list[Any]:
        return [list(self.links)]


@dataclass(frozen=True, slots=True)
class Want:
    TYPE: ClassVar[int] = 3
    origin: bytes
    start: int
    end: int

    def __post_init__(self) -> None:
        _check(_is_id(self.origin), "bad origin")
        _check(_is_int(self.start) and _is_int(self.end) and self.start < self.end, "bad range")

    def fields(self) -> list[Any]:
        return [self.origin, self.start, self.end]


@dataclass(frozen=True, slots=True)
class Notes:
    TYPE: ClassVar[int] = 4
    origin: bytes
    start: int
    prev: bytes
    bodies: tuple[Body, ...]
    sig: bytes

    def __post_init__(self) -> None:
        _check(_is_id(self.origin), "bad origin")
        _check(_is_id(self.prev), "bad previous id")
        _check(_is_int(self.start) and self.start + len(self.bodies) <= MAX_SEQNO, "bad start")
        _check(len(self.bodies) > 0, "empty batch")
        _check(type(self.sig) is bytes and len(self.sig) == SIG_SIZE, "bad signature size")

    @property
    def end(self) -> int:
        return self.start + len(self.bodies)

    def fields(self) -> list[Any]:
        return [self.origin, self.start, self.prev, list(self.bodies), self.sig]


Message = Hello | Heads | Links | Want | Notes


def encode(msg: Message) -> bytes:
    return cbor2.dumps([msg.TYPE, *msg.fields()])


def encode_notes(origin: bytes, start: int, prev: bytes, bodies: list[Body], sig: bytes) -> bytes:
    """`encode(Notes(...))` for notes this node just made itself, without building the
    message object: the hot path of every publish while linked."""
    return cbor2.dumps([Notes.TYPE, origin, start, prev, bodies, sig])


def decode(frame: bytes, config: Config = DEFAULT) -> Message:
    """Parse and validate one frame; every failure is a `RemoteProtocolError`."""
    _check(type(frame) is bytes, "a frame must be bytes")
    _check(len(frame) <= config.max_frame, f"frame of {len(frame)} bytes exceeds max_frame")
    fp = io.BytesIO(frame)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise RemoteProtocolError(f"undecodable CBOR: {e}") from None
    _check(fp.tell() == len(frame), "trailing bytes after the CBOR item")
    _check(type(item) is list and len(item) >= 1, "a frame is a non-empty CBOR array")
    kind, args = item[0], item[1:]
    try:
        return _PARSERS[kind](args, config)
    except KeyError:
        raise RemoteProtocolError(f"unknown message type {kind!r}") from None
    except TypeError:  # wrong arity or an unhashable CBOR type where a key was expected
        raise RemoteProtocolError(f"malformed message of type {kind!r}") from None


def _parse_hello(a: list[Any], c: Config) -> Hello:
    _check(len(a) == 7, "HELLO takes 7 fields")
    heads = _heads(a[3], c.heads_page)
    return Hello(a[0], a[1], a[2], heads, _tips(a[4], c.heads_page), _links(a[5], c.heads_page),
                 a[6])


def _parse_heads(a: list[Any], c: Config) -> Heads:
    _check(len(a) == 2, "HEADS takes 2 fields")
    return Heads(_heads(a[0], c.heads_page), _tips(a[1], c.heads_page))


def _parse_links(a: list[Any], c: Config) -> Links:
    _check(len(a) == 1, "LINKS takes 1 field")
    return Links(_links(a[0], c.heads_page))


def _parse_want(a: list[Any], c: Config) -> Want:
    _check(len(a) == 3, "WANT takes 3 fields")
    return Want(a[0], a[1], a[2])


def _parse_notes(a: list[Any], c: Config) -> Notes:
    _check(len(a) == 5, "NOTES takes 5 fields")
    bodies = a[3]
    _check(type(bodies) is list and len(bodies) <= c.batch_notes, "too many notes in a batch")
    limit = c.max_body + AGAIN_OVERHEAD
    for b in bodies:
        # len() of text counts characters; UTF-8 takes at most 4 bytes for each
        t = type(b)
        _check(t is bytes or t is str, "a body is text or bytes")
        _check(len(b) <= limit and (t is bytes or len(b) * 4 <= limit or body_size(b) <= limit),
               "a body exceeds max_body")
    return Notes(a[0], a[1], a[2], tuple(bodies), a[4])


def body_size(body: Body) -> int:
    """A body's size in bytes as stored and sent."""
    return len(body.encode()) if isinstance(body, str) else len(body)


_PARSERS: dict[int, Callable[[list[Any], Config], Message]] = {
    Hello.TYPE: _parse_hello,
    Heads.TYPE: _parse_heads,
    Links.TYPE: _parse_links,
    Want.TYPE: _parse_want,
    Notes.TYPE: _parse_notes,
}
