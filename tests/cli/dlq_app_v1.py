"""The app before the fix: it has no ``dlqtest.late`` (the broker: $CELERIAC_BROKER)."""

from __future__ import annotations

from celeriac import App

app = App("dlqtest")


@app.task(name="dlqtest.ping")
async def ping() -> str:
    return "pong"
