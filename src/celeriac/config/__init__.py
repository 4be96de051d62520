"""Configuration: settings and their sources."""

from __future__ import annotations

from celeriac.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
