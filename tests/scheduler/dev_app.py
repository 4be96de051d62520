"""The app of the ``celeriac dev`` test: a periodic task runs with no scheduler process.

The broker comes from ``CELERIAC_BROKER``; each run appends a line to the file
named by ``TICKS_FILE``. ``main`` (``--run``) returns once three runs are there.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread

from celeriac import App

app = App("devticks")


@app.periodic(every=0.5, name="devticks.tick")
def tick() -> None:
    with Path(os.environ["TICKS_FILE"]).open("a") as out:
        out.write("ran\n")


def _runs() -> int:
    path = Path(os.environ["TICKS_FILE"])
    return len(path.read_text().splitlines()) if path.exists() else 0


async def main(app: App) -> int:
    while await anyio.to_thread.run_sync(_runs) < 3:
        await anyio.sleep(0.1)
    return 0
