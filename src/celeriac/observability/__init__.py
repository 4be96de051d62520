"""Observability: structured logs (metrics and traces come with their own issue)."""

from __future__ import annotations

from celeriac.observability.logs import configure_logging

__all__ = ["configure_logging"]
