"""Keys, signatures, note ids, the group secret and join codes.

A node's origin id is its Ed25519 public key (32 bytes). Each origin's log is a hash chain: a
note's id is BLAKE2b over (origin, seqno, previous id, body), so a signature on one id vouches
for every note before it. The group secret (32 random bytes) is what a join code carries; from
it come the public group id announced on the LAN and the CurveZMQ server key that only members
can know. Nothing here does I/O.

Ed25519 runs on `cryptography` (OpenSSL), or on libsodium when PyNaCl is installed (the `fast`
extra): here libsodium signs in 26 us instead of 31 and checks in 53 us instead of 106, and a
publish while linked to a peer pays for both. Ed25519 signing is deterministic, so both give
the same bytes. Implementations differ on odd inputs (small-order points, non-canonical
encodings: "Taming the many EdDSAs", Chalkias et al. 2020), and members that disagreed on a
signature would hold different notes; so `verify` first refuses every such input itself, by
libsodium's rules, and the two backends then agree on all that is left.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import BadJoinCode

try:
    import nacl.bindings
    from nacl.exceptions import BadSignatureError as _SodiumBadSignature

    _sodium: Any = nacl.bindings
except ImportError:  # the `fast` extra is not installed
    _sodium = None

ID_SIZE = 32
SIG_SIZE = 64
GROUP_ID_SIZE = 16
GENESIS = bytes(ID_SIZE)  # the "previous id" of every origin's first note

_P = 2**255 - 19  # the field of Curve25519 / Ed25519
_L = 2**252 + 27742317777372353535851937790883648493  # the order of the Ed25519 base point
_Y_MASK = (1 << 255) - 1  # an encoded point is y, with the sign of x in the top bit
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
# y of every point of order 1, 2, 4 or 8 (each with either sign of x)
SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})

#: Which Ed25519 implementation signs and verifies: see the module docstring.
BACKENDS: tuple[str, ...] = ("libsodium", "cryptography") if _sodium else ("cryptography",)
_backend = BACKENDS[0]


def backend() -> str:
    """The Ed25519 implementation in use: the first of BACKENDS unless switched."""
    return _backend


def use_backend(name: str) -> None:
    """Switch the Ed25519 implementation (for tests and benchmarks; results are the same)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"Ed25519 backend {name!r} is not available here: {BACKENDS}")
    _backend = name


def _blake(data: bytes, person: bytes, size: int = ID_SIZE) -> bytes:
    return hashlib.blake2b(data, digest_size=size, person=person).digest()


_NOTE_HASH = hashlib.blake2b(digest_size=ID_SIZE, person=b"zflood:note:v1")


def note_id(origin: bytes, seqno: int, prev: bytes, body: str | bytes) -> bytes:
    """The id that chains a note to its predecessor; text and bytes bodies never collide."""
    if isinstance(body, str):
        tag, raw = b"t", body.encode()
    else:
        tag, raw = b"b", body
    h = _NOTE_HASH.copy()  # a third cheaper than building one: every stored note is rechecked
    h.update(origin)
    h.update(seqno.to_bytes(8, "big"))
    h.update(prev)
    h.update(tag)
    h.update(raw)
    return h.digest()


class SigningKey:
    """A node's Ed25519 key: its public half is the node's origin id."""

    __slots__ = ("_key", "_sk", "public", "seed")

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = os.urandom(32)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._sk = seed + self.public  # libsodium's form of the secret key

    def sign(self, message: bytes) -> bytes:
        if _backend == "libsodium":
            return _sodium.crypto_sign(message, self._sk)[:SIG_SIZE]  # type: ignore[no-any-return]
        return self._key.sign(message)

    def curve_secret(self) -> bytes:
        """The X25519 secret matching this key (RFC 8032 / libsodium's conversion), so a
        CurveZMQ client key proves the same identity as the origin id."""
        return hashlib.sha512(self.seed).digest()[:32]


_verifiers: dict[bytes, Ed25519PublicKey | None] = {}  # origin -> key, None if refused


def verify(origin: bytes, signature: bytes, message: bytes) -> bool:
    """True if `signature` is `origin`'s signature of `message`; never raises on bad input."""
    if type(origin) is not bytes or type(signature) is not bytes or type(message) is not bytes:
        return False
    if origin in _verifiers:
        key = _verifiers[origin]
    else:
        key = _public_key(origin)
        if len(_verifiers) < 4096:  # a group has few origins; the bound keeps junk out
            _verifiers[origin] = key
    if key is None or len(signature) != SIG_SIZE:
        return False
    if int.from_bytes(signature[32:], "little") >= _L or not _fair_point(signature[:32]):
        return False  # S not reduced, or R of small order: refused whatever the backend
    if _backend == "libsodium":
        try:
            _sodium.crypto_sign_open(signature + message, origin)
        except _SodiumBadSignature:
            return False
        return True
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _public_key(origin: bytes) -> Ed25519PublicKey | None:
    if len(origin) != ID_SIZE or not _fair_point(origin):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(origin)
    except ValueError:
        return None


def _fair_point(encoded: bytes) -> bool:
    """The encoding is canonical (y < p) and not of a point of small order."""
    y = int.from_bytes(encoded, "little") & _Y_MASK
    return y < _P and y not in SMALL_ORDER_Y


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
