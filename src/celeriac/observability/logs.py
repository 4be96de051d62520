"""Structured logging through structlog's stdlib integration.

celeriac's modules log with the stdlib ``logging`` module (so users' handlers
keep working); the CLI renders those records as JSON lines (``--log-format
json``, for machines) or as readable console lines (the default on a terminal).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging"]


def configure_logging(
    level: str | int = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Send log records to stderr, rendered as JSON or console lines."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_celeriac", False):
            root.removeHandler(old)
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
