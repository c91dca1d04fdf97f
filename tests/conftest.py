"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zflood import identity


@pytest.fixture(params=identity.BACKENDS)
def ed25519_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once with each Ed25519 implementation installed here."""
    before = identity.backend()
    identity.use_backend(request.param)
    yield request.param
    identity.use_backend(before)
