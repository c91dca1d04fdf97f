"""Ed25519 through either backend: the same signatures, the same verdicts, odd inputs refused."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from zflood import identity
from zflood.identity import SMALL_ORDER_Y, SigningKey, verify

T = TypeVar("T")
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
BASE = (4 * pow(5, P - 2, P) % P).to_bytes(32, "little")  # y = 4/5, x even

def small_order_encodings() -> list[bytes]:
    return [(y | sign << 255).to_bytes(32, "little") for y in SMALL_ORDER_Y for sign in (0, 1)]


needs_both = pytest.mark.skipif(
    len(identity.BACKENDS) < 2, reason="PyNaCl (the `fast` extra) is not installed"
)


def each_backend(work: Callable[[], T]) -> dict[str, T]:
    """What `work()` gives under each installed backend, by name."""
    before = identity.backend()
    try:
        out = {}
        for name in identity.BACKENDS:
            identity.use_backend(name)
            out[name] = work()
        return out
    finally:
        identity.use_backend(before)


def verdicts(origin: bytes, sig: bytes, msg: bytes) -> dict[str, bool]:
    return each_backend(lambda: verify(origin, sig, msg))


@needs_both
@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=200))
def test_both_backends_sign_the_same_bytes_and_accept_each_other(seed: bytes, msg: bytes) -> None:
    key = SigningKey(seed)
    sigs = each_backend(lambda: key.sign(msg))
    assert sigs["libsodium"] == sigs["cryptography"]
    assert verdicts(key.public, sigs["libsodium"], msg) == {"libsodium": True, "cryptography": True}


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=64),
       flip=st.integers(0, 64 * 8 - 1))
def test_any_changed_bit_of_a_signature_is_refused_by_every_backend(
    seed: bytes, msg: bytes, flip: int
) -> None:
    key = SigningKey(seed)
    sig = bytearray(key.sign(msg))
    sig[flip // 8] ^= 1 << (flip % 8)
    assert set(verdicts(key.public, bytes(sig), msg).values()) == {False}
    assert set(verdicts(key.public, key.sign(msg), msg + b"!").values()) == {False}


def test_a_signature_with_s_not_reduced_is_refused(ed25519_backend: str) -> None:
    key = SigningKey(b"\x07" * 32)
    sig = key.sign(b"note")
    s = int.from_bytes(sig[32:], "little")
    assert verify(key.public, sig, b"note")
    assert not verify(key.public, sig[:32] + (s + L).to_bytes(32, "little"), b"note")


def openssl_accepts(origin: bytes, sig: bytes, msg: bytes) -> bool:
    """What `cryptography` alone says, without verify()'s own checks."""
    try:
        Ed25519PublicKey.from_public_bytes(origin).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


# Under the neutral point as a key, R = B and S = 1 satisfy S*B = R + h*A for every message.
NEUTRAL_FORGERY = BASE + (1).to_bytes(32, "little")


def test_a_key_of_small_order_vouches_for_nothing(ed25519_backend: str) -> None:
    neutral = (1).to_bytes(32, "little")
    assert openssl_accepts(neutral, NEUTRAL_FORGERY, b"anything")  # so the check matters
    assert not verify(neutral, NEUTRAL_FORGERY, b"anything")
    for origin in small_order_encodings():
        assert not verify(origin, NEUTRAL_FORGERY, b"anything")


def test_a_non_canonical_encoding_of_the_neutral_point_vouches_for_nothing(
    ed25519_backend: str,
) -> None:
    neutral = (P + 1).to_bytes(32, "little")  # y = p + 1 = 1 (mod p): not in the small set
    assert openssl_accepts(neutral, NEUTRAL_FORGERY, b"anything")
    assert not verify(neutral, NEUTRAL_FORGERY, b"anything")


def test_a_signature_with_r_of_small_order_is_refused(ed25519_backend: str) -> None:
    # The key's holder can make R the neutral point: S = h*a passes a check without
    # verify()'s own rules (OpenSSL), not with them (libsodium refuses such R itself).
    seed = b"\x0b" * 32
    key = SigningKey(seed)
    expanded = hashlib.sha512(seed).digest()
    a = int.from_bytes(expanded[:32], "little") & ((1 << 254) - 8) | (1 << 254)  # RFC 8032
    r = (1).to_bytes(32, "little")
    challenge = int.from_bytes(hashlib.sha512(r + key.public + b"note").digest(), "little")
    sig = r + (challenge * a % L).to_bytes(32, "little")
    assert openssl_accepts(key.public, sig, b"note")
    assert not verify(key.public, sig, b"note")


def test_non_canonical_keys_and_small_order_r_are_refused(ed25519_backend: str) -> None:
    key = SigningKey(b"\x09" * 32)
    sig = key.sign(b"note")
    for y in range(P, 2**255):  # the 19 encodings of y that are >= p
        assert not verify(y.to_bytes(32, "little"), sig, b"note")
    for r in small_order_encodings():
        assert not verify(key.public, r + sig[32:], b"note")
    assert not verify(bytearray(key.public), sig, b"note")  # type: ignore[arg-type]
    assert not verify(key.public, sig, "note")  # type: ignore[arg-type]


ODD_POINTS = [*small_order_encodings(), BASE]


@needs_both
@settings(max_examples=200, deadline=None)
@given(origin=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(ODD_POINTS)),
       r=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(ODD_POINTS)),
       s=st.one_of(st.integers(0, 2**256 - 1), st.integers(0, 16), st.integers(L - 2, L + 2)),
       msg=st.binary(max_size=16))
def test_backends_agree_on_arbitrary_inputs(origin: bytes, r: bytes, s: int, msg: bytes) -> None:
    sig = r + s.to_bytes(32, "little")
    assert len(set(verdicts(origin, sig, msg).values())) == 1


def test_the_small_order_set_is_exactly_the_points_of_order_dividing_8() -> None:
    points = []
    for y in SMALL_ORDER_Y:
        for x in recover_x(y):
            points.append((x, y))
            q = (x, y)
            for _ in range(3):
                q = add(q, q)
            assert q == (0, 1), f"y={y} is not of order dividing 8"
    assert len(set(points)) == 8  # the torsion subgroup of Curve25519 has 8 points


def recover_x(y: int) -> set[int]:
    """Both x of the curve point with this y (one if x = 0)."""
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert (x * x - xx) % P == 0
    return {x, (P - x) % P}


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)
