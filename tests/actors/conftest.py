"""Run every ``@pytest.mark.anyio`` test of the actor core on asyncio and on trio."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loops the actor core must work on."""
    return str(request.param)
