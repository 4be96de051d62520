"""The app after the fix: ``dlqtest.late`` is registered now (the broker: $CELERIAC_BROKER)."""

from __future__ import annotations

from celeriac import App

app = App("dlqtest")


@app.task(name="dlqtest.ping")
async def ping() -> str:
    return "pong"


@app.task(name="dlqtest.late")
def late(x: int, y: int, note: str = "") -> int:
    return x * y
