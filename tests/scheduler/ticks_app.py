"""The app of the scheduler process tests: one task published every second.

The broker comes from ``CELERIAC_BROKER`` (the test's own Redis prefix or
PostgreSQL schema); the coordinator is the same store.
"""

from __future__ import annotations

from celeriac import App

app = App("ticks")


@app.periodic(every=1, name="ticks.second", ignore_result=True)
def second() -> None:
    """Nothing to do: the test reads the published messages off the queue."""
