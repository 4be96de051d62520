"""The publisher: a hung broker times out, an outage is logged once, nothing is dropped."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from tests.publisher._support import db_path, write_locked

from celeriac.abc import Broker, Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.publisher import Publisher
from celeriac.publisher.disk import SqliteBacklog

pytestmark = pytest.mark.anyio


def message(n: int) -> Outgoing:
    return Outgoing(queue="q", id=f"m{n}", body=b"%d" % n)


async def fetch_all(broker: Broker, count: int) -> list[str]:
    got: list[str] = []
    with anyio.fail_after(10):
        while len(got) < count:
            deliveries = await broker.fetch(["q"], count - len(got), 1.0)
            await broker.ack(deliveries)
            got += [d.id for d in deliveries]
    return got


class Hanging:
    """A broker that takes messages and never answers until :meth:`answer` (then it
    passes them to the memory broker behind it): a server that hangs."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls = 0
        self._answering = anyio.Event()

    def answer(self) -> None:
        self._answering.set()

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        self.calls += 1
        await self._answering.wait()
        await self.inner.publish(messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_hung_broker_times_out_and_the_batch_is_retried_until_it_answers() -> None:
    inner = open_broker("memory://hanging", Hub())
    await inner.connect()
    hanging = Hanging(inner)
    publisher = Publisher(
        {inner.url: cast(Broker, hanging)}, timeout=0.05, backoff=(0.01, 0.02), batch_size=4
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run)
        tickets = [publisher.submit(inner.url, message(n)) for n in range(10)]
        with anyio.fail_after(10):
            while publisher.failures < 3:  # each a timeout: nothing would end the call
                await anyio.sleep(0.01)
        assert hanging.calls >= 3
        assert not any(t.accepted for t in tickets)
        assert len(publisher) == 10
        hanging.answer()
        assert await publisher.flush(10)
        tg.cancel_scope.cancel()
    assert all(t.accepted and t.message is None for t in tickets)
    assert await fetch_all(inner, 10) == [f"m{n}" for n in range(10)]


async def test_an_outage_is_logged_once_and_its_end_with_what_was_held(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "celeriac.publisher")
    url = sqlite_url + "?busy_timeout=0.05"
    broker = open_broker(url, Hub())
    await broker.connect()
    publisher = Publisher({url: broker}, backoff=(0.01, 0.02))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run)
            publisher.submit(url, message(0))
            assert await publisher.flush(10)
            with write_locked(db_path(sqlite_url)):
                tickets = [publisher.submit(url, message(n)) for n in range(1, 6)]
                with anyio.fail_after(10):
                    while publisher.failures < 5:
                        await anyio.sleep(0.01)
                tickets += [publisher.submit(url, message(n)) for n in range(6, 11)]
                assert not any(t.accepted for t in tickets)
            assert await publisher.flush(10)
            tg.cancel_scope.cancel()
        assert all(t.accepted for t in tickets)
        assert await fetch_all(broker, 11) == [f"m{n}" for n in range(11)]
    finally:
        await broker.close()
    mine = [r for r in caplog.records if r.name == "celeriac.publisher"]
    warnings = [r for r in mine if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "did not accept messages" in warnings[0].message
    recovered = [r for r in mine if r.levelno == logging.INFO]
    assert len(recovered) == 1
    assert "accepts messages again" in recovered[0].message
    assert "10 message(s) were held" in recovered[0].message
    assert sum(r.levelno == logging.DEBUG for r in mine) >= 4  # the retries, quietly


async def test_rows_of_a_sqlite_backlog_are_deleted_once_the_broker_accepted_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    broker = open_broker(sqlite_url, Hub())
    await broker.connect()
    backlog = SqliteBacklog(tmp_path / "backlog.db")
    backlog.open([sqlite_url])
    publisher = Publisher({sqlite_url: broker}, backlog=backlog, batch_size=64)
    try:
        tickets = [publisher.submit(sqlite_url, message(n)) for n in range(300)]
        conn = sqlite3.connect(tmp_path / "backlog.db")
        try:
            count = "SELECT count(*) FROM celeriac_backlog"
            assert conn.execute(count).fetchone() == (300,)  # written before submit returned
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher.run)
                assert await publisher.flush(10)
                tg.cancel_scope.cancel()
            assert conn.execute(count).fetchone() == (0,)
        finally:
            conn.close()
        assert all(t.accepted for t in tickets)
        assert await fetch_all(broker, 300) == [f"m{n}" for n in range(300)]
    finally:
        backlog.close()
        await broker.close()
