"""Declaring periodic tasks on an App: ``@app.periodic(...)`` and ``app.periodic(task, ...)``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac import App, ConfigurationError, Task
from celeriac.scheduler.periodic import Cron, Every, Periodic


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App("shop", broker=f"sqlite:///{tmp_path / 'x.db'}")


def test_the_decorator_registers_a_task_and_its_schedule(app: App) -> None:
    @app.periodic(cron="*/5 * * * *", tz="Europe/Paris", queue="cron", priority=3)
    def cleanup() -> int:
        return 7

    assert isinstance(cleanup, Task)
    assert cleanup() == 7
    assert app.tasks[cleanup.name] is cleanup
    assert (cleanup.options.queue, cleanup.options.priority) == ("cron", 3)
    periodic = app.periodics[cleanup.name]
    assert periodic == Periodic(
        cleanup.name, cleanup.name, Cron("*/5 * * * *", ZoneInfo("Europe/Paris"))
    )
    assert periodic.missed == "skip"


def test_every_takes_seconds_or_a_timedelta(app: App) -> None:
    @app.periodic(every=timedelta(minutes=2), name="shop.sweep", missed="catch_up_once")
    async def sweep() -> None: ...

    @app.periodic(every=0.5)
    def often() -> None: ...

    assert sweep.name == "shop.sweep"
    assert app.periodics["shop.sweep"].schedule == Every(timedelta(minutes=2))
    assert app.periodics["shop.sweep"].missed == "catch_up_once"
    assert app.periodics[often.name].schedule == Every(timedelta(milliseconds=500))


def test_an_existing_task_gets_schedules_with_arguments(app: App) -> None:
    @app.task
    def report(kind: str, days: int = 1) -> None: ...

    app.register("shop.legacy", lambda: None)
    daily = app.periodic(report, cron="0 6 * * *", args=("sales",), name="daily-sales")
    weekly = app.periodic(report.name, cron="0 6 * * 1", kwargs={"kind": "all", "days": 7})
    legacy = app.periodic("shop.legacy", every=60)

    assert isinstance(daily, Periodic)
    assert (daily.name, daily.task, daily.args) == ("daily-sales", report.name, ("sales",))
    assert (weekly.name, weekly.kwargs) == (report.name, {"kind": "all", "days": 7})
    assert legacy.task == "shop.legacy"
    assert set(app.periodics) == {"daily-sales", report.name, "shop.legacy"}
    when = datetime(2025, 1, 6, 12, tzinfo=UTC)  # a Monday
    assert weekly.schedule.next_after(when) == datetime(2025, 1, 13, 6, tzinfo=UTC)


def test_periodics_belong_to_their_app(app: App, tmp_path: Path) -> None:
    other = App("other", broker=f"sqlite:///{tmp_path / 'y.db'}")

    @app.periodic(every=1)
    def tick() -> None: ...

    assert list(app.periodics) == [tick.name]
    assert other.periodics == {}


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda app, task: app.periodic(task, every=1), ConfigurationError, "exists"),
        (lambda app, task: app.periodic("shop.nothing", every=1), ConfigurationError, "no task"),
        (
            lambda app, task: app.periodic(task, every=1, name="x", queue="q"),
            TypeError,
            "task options",
        ),
        (
            lambda app, task: app.periodic(task, every=1, name="y", args=(object(),)),
            ConfigurationError,
            "arguments",
        ),
        (
            lambda app, task: app.periodic(task, every=1, name="z", missed="later"),
            ConfigurationError,
            "missed",
        ),
        (
            lambda app, task: app.periodic(task, cron="0 25 * * *", name="w"),
            ConfigurationError,
            "bad cron",
        ),
        (
            lambda app, task: app.periodic(task, name="v"),
            ConfigurationError,
            "either cron= or every=",
        ),
        (
            lambda app, task: app.periodic(task, every=-1, name="u"),
            ConfigurationError,
            "more than 0",
        ),
    ],
)
def test_a_bad_declaration_is_refused_at_once(
    app: App, call: Any, error: type[Exception], message: str
) -> None:
    @app.periodic(every=10)
    def first() -> None: ...

    before = dict(app.periodics)
    with pytest.raises(error, match=message):
        call(app, first)
    assert app.periodics == before


def test_a_second_decorated_periodic_of_the_same_name_registers_nothing(app: App) -> None:
    @app.periodic(every=10, name="shop.job")
    def job() -> None: ...

    def other() -> None: ...

    with pytest.raises(ConfigurationError, match="exists"):
        app.periodic(every=5, name="shop.job")(other)
    assert app.tasks["shop.job"].fn is job.fn
