"""Helpers for tests of celeriac applications and backends.

:class:`BrokerConformance` and :class:`SinkConformance` (the backend contract as
pytest tests) live in :mod:`celeriac.testing.conformance`; they are re-exported
here lazily, so importing this package does not import pytest.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BrokerConformance", "ServerRestartConformance", "SinkConformance"]


def __getattr__(name: str) -> Any:
    if name == "ServerRestartConformance":
        from celeriac.testing import restart

        return restart.ServerRestartConformance
    if name in __all__:
        from celeriac.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
