"""An app for the suspend/resume CLI test; its broker comes from $CELERIAC_BROKER."""

from __future__ import annotations

from celeriac import App

app = App("suspending")


@app.task(name="suspending.add")
async def add(a: int, b: int) -> int:
    """A task to suspend."""
    return a + b
