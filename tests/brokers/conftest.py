"""Fixtures for the broker and sink tests: every async test runs on asyncio and trio."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("celeriac.testing.conformance")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loop each ``anyio``-marked test runs on."""
    return str(request.param)
