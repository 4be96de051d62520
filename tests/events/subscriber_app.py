"""A worker's app that knows the event only by name (``tests.events.Signup``).

Its two subscribers append a line to the file named in the event's ``path`` field,
so the test counts how often each ran, across processes.
"""

from __future__ import annotations

from celeriac import App

app = App("events")


def _record(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@app.task(name="events.welcome")
def welcome(user_id: int, email: str, path: str) -> None:
    """Sends the welcome mail (records it)."""
    _record(path, f"welcome {user_id} {email}")


@app.task(name="events.count")
async def count(user_id: int, email: str, path: str) -> None:
    """Counts signups (records it)."""
    _record(path, f"count {user_id}")


app.subscribe("tests.events.Signup", welcome)
app.subscribe("tests.events.Signup", count)
