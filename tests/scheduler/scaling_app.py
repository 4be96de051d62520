"""The app of the ``celeriac scheduler --metrics-port`` test (broker: ``CELERIAC_BROKER``)."""

from __future__ import annotations

import time

from celeriac import App

app = App("scaling")


@app.task(name="scaling.work")
def work(n: int) -> int:
    """A little blocking work."""
    time.sleep(0.05)
    return n
