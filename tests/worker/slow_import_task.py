"""A task module that takes a while to import (for the box soft-limit test)."""

from __future__ import annotations

import time

from celeriac import TimeLimitExceeded

time.sleep(0.6)  # a heavy import: longer than the soft limit of the test


def told(seconds: float) -> str:
    """Sleeps; says whether it was told of its soft limit."""
    try:
        time.sleep(seconds)
    except TimeLimitExceeded:
        return "told"
    return "not told"
