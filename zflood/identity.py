"""Keys, signatures, note ids, the group secret and join codes.

A node's origin id is its Ed25519 public key (32 bytes). Each origin's log is a hash chain: a
note's id is BLAKE2b over (origin, seqno, previous id, body), so a signature on one id vouches
for every note before it. The group secret (32 random bytes) is what a join code carries; from
it come the public group id announced on the LAN and the CurveZMQ server key that only members
can know. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import BadJoinCode

ID_SIZE = 32
SIG_SIZE = 64
GROUP_ID_SIZE = 16
GENESIS = bytes(ID_SIZE)  # the "previous id" of every origin's first note

_P = 2**255 - 19  # the field of Curve25519 / Ed25519


def _blake(data: bytes, person: bytes, size: int = ID_SIZE) -> bytes:
    return hashlib.blake2b(data, digest_size=size, person=person).digest()


def note_id(origin: bytes, seqno: int, prev: bytes, body: str | bytes) -> bytes:
    """The id that chains a note to its predecessor; text and bytes bodies never collide."""
    if isinstance(body, str):
        tag, raw = b"t", body.encode()
    else:
        tag, raw = b"b", body
    h = hashlib.blake2b(digest_size=ID_SIZE, person=b"zflood:note:v1")
    h.update(origin)
    h.update(seqno.to_bytes(8, "big"))
    h.update(prev)
    h.update(tag)
    h.update(raw)
    return h.digest()


class SigningKey:
    """A node's Ed25519 key: its public half is the node's origin id."""

    __slots__ = ("_key", "public", "seed")

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = os.urandom(32)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def curve_secret(self) -> bytes:
        """The X25519 secret matching this key (RFC 8032 / libsodium's conversion), so a
        CurveZMQ client key proves the same identity as the origin id."""
        return hashlib.sha512(self.seed).digest()[:32]


_verifiers: dict[bytes, Ed25519PublicKey] = {}


def verify(origin: bytes, signature: bytes, message: bytes) -> bool:
    """True if `signature` is `origin`'s signature of `message`; never raises on bad input."""
    key = _verifiers.get(origin)
    if key is None:
        try:
            key = Ed25519PublicKey.from_public_bytes(origin)
        except ValueError:
            return False
        if len(_verifiers) < 4096:  # a group has few origins; the bound keeps junk out
            _verifiers[origin] = key
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def ed25519_to_x25519_public(origin: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key: u = (1 + y) / (1 - y) mod p."""
    if len(origin) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(origin, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_public(secret: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


# -- the group -------------------------------------------------------------------------------

_CODE_PREFIX = "zf1-"


@dataclass(frozen=True)
class Group:
    """What a join code carries. `id` is public; everything else derives from `secret`."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a group secret is 32 bytes")

    @classmethod
    def new(cls) -> Group:
        return cls(os.urandom(32))

    @property
    def id(self) -> bytes:
        """Announced over mDNS: a one-way hash, so it reveals nothing of the secret."""
        return _blake(self.secret, b"zflood:group-id", GROUP_ID_SIZE)

    @property
    def curve_server_secret(self) -> bytes:
        """Every member's ROUTER uses this CurveZMQ key pair. Its public half never leaves a
        member (it is not announced), so only members can complete a CURVE handshake."""
        return _blake(self.secret, b"zflood:curve-srv")

    @property
    def curve_server_public(self) -> bytes:
        return x25519_public(self.curve_server_secret)

    @property
    def join_code(self) -> str:
        check = _blake(self.secret, b"zflood:joincode", 4)
        text = base64.b32encode(self.secret + check).decode().rstrip("=").lower()
        return _CODE_PREFIX + "-".join(text[i : i + 6] for i in range(0, len(text), 6))

    @classmethod
    def from_join_code(cls, code: str) -> Group:
        text = "".join(code.split()).lower()
        if not text.startswith(_CODE_PREFIX):
            raise BadJoinCode(f"a join code starts with {_CODE_PREFIX!r}")
        text = text[len(_CODE_PREFIX) :].replace("-", "").upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except ValueError:
            raise BadJoinCode("a join code holds only letters a-z, digits 2-7 and dashes") from None
        if len(raw) != 36:
            raise BadJoinCode("this join code is too short or too long")
        secret, check = raw[:32], raw[32:]
        if not hmac.compare_digest(check, _blake(secret, b"zflood:joincode", 4)):
            raise BadJoinCode("this join code has a typo (its checksum does not match)")
        return cls(secret)
