"""Result.confirmed(): accepted by the broker, or still in the backlog; sync and async."""

from __future__ import annotations

import pytest
from tests.publisher._support import db_path, write_locked

from celeriac import App


@pytest.fixture
def app(sqlite_url: str) -> App:
    # The broker gives up on a locked file quickly, so an outage is seen at once.
    return App("confirm", broker=sqlite_url + "?busy_timeout=0.05")


def test_sync_code_learns_whether_its_message_was_confirmed(app: App, sqlite_url: str) -> None:
    try:
        first = app.send_task("confirm.task", ignore_result=True)
        assert first.confirmed(timeout=30)
        assert first.confirmed()  # a look, no wait
        with write_locked(db_path(sqlite_url)):  # the broker accepts nothing
            held = [app.send_task("confirm.task", (n,), ignore_result=True) for n in range(20)]
            assert not any(r.confirmed() for r in held)
            assert not held[-1].confirmed(timeout=0.2)  # waited, still held
        assert held[-1].confirmed(timeout=30)
        assert all(r.confirmed() for r in held)  # oldest first: the earlier ones too
    finally:
        app.close()


def test_a_result_not_published_here_cannot_tell(app: App) -> None:
    with pytest.raises(RuntimeError, match="not published by this process"):
        app.result("0" * 32).confirmed()


@pytest.mark.anyio
async def test_async_code_waits_for_confirmation_in_its_own_loop(app: App, sqlite_url: str) -> None:
    async with app:
        first = app.send_task("confirm.task", ignore_result=True)
        assert await first.confirmed_async(30)
        with write_locked(db_path(sqlite_url)):
            held = app.send_task("confirm.task", ignore_result=True)
            assert not held.confirmed()  # a look works anywhere
            assert not await held.confirmed_async(0.2)
            with pytest.raises(RuntimeError, match="confirmed_async"):
                held.confirmed(timeout=1)  # a blocking wait would block this loop
        assert await held.confirmed_async(30)
        assert await held.confirmed_async()


@pytest.mark.anyio
async def test_async_code_without_a_runtime_of_its_own_is_confirmed_too(app: App) -> None:
    # No `async with app`: the background runtime publishes; this loop only waits.
    try:
        result = app.send_task("confirm.task", ignore_result=True)
        assert await result.confirmed_async(30)
    finally:
        app.close()
