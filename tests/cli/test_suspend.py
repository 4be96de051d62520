"""``celeriac suspend`` / ``resume``: the flag every worker follows, in the app's store."""

from __future__ import annotations

import sys

import anyio
import pytest
from click.testing import CliRunner

from celeriac import App
from celeriac.brokers import Hub
from celeriac.cli import main
from celeriac.coordination import open_coordinator
from celeriac.worker.suspend import SUSPENDED


def _flag(url: str, name: str) -> int:
    async def read() -> int:
        store = open_coordinator(url, Hub())
        await store.connect()
        try:
            return await store.add(SUSPENDED + name, 0, None)
        finally:
            await store.close()

    return anyio.run(read)


def test_suspend_and_resume_record_the_flag(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_BROKER", sqlite_url)
    # The app module reads its broker when imported: import it afresh for this test.
    monkeypatch.delitem(sys.modules, "tests.cli.suspend_app", raising=False)
    runner = CliRunner()
    done = runner.invoke(main, ["suspend", "tests.cli.suspend_app:app", "suspending.add"])
    assert done.exit_code == 0, done.output
    assert "suspending.add: suspended" in done.output
    assert _flag(sqlite_url, "suspending.add") == 1
    again = runner.invoke(main, ["suspend", "tests.cli.suspend_app:app", "suspending.add"])
    assert again.exit_code == 0
    assert _flag(sqlite_url, "suspending.add") == 1  # suspending twice is still once
    done = runner.invoke(main, ["resume", "tests.cli.suspend_app:app", "suspending.add"])
    assert done.exit_code == 0, done.output
    assert _flag(sqlite_url, "suspending.add") == 0
    unknown = runner.invoke(main, ["suspend", "tests.cli.suspend_app:app", "no.such"])
    assert "not a task of this app" in unknown.output


def test_app_suspend_from_sync_code(sqlite_url: str) -> None:
    app = App("sync", broker=sqlite_url)
    try:
        app.suspend("x.y")
    finally:
        app.close()
    assert _flag(sqlite_url, "x.y") == 1
