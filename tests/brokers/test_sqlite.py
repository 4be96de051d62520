"""sqlite:// specifics: one file for broker and sink, many processes, quick wake-ups."""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import anyio
import pytest

from celeriac.abc import Outgoing, StoredDocument
from celeriac.brokers import Hub, open_broker
from celeriac.brokers.sqlite import SqliteBroker
from celeriac.errors import BrokerError
from celeriac.sinks import open_sink
from celeriac.testing.conformance import _IMPORT_ROOT

pytestmark = pytest.mark.anyio

_PRODUCER = """
import sys, anyio
from celeriac.abc import Outgoing
from celeriac.brokers import Hub, open_broker

async def main(url, name):
    broker = open_broker(url, Hub())
    await broker.connect()
    for start in range(0, 300, 3):
        await broker.publish([Outgoing("q", f"{name}-{n}", b"") for n in range(start, start + 3)])
    await broker.close()

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_broker_and_sink_share_one_wal_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/celeriac.db"
    broker, sink = open_broker(url, Hub()), open_sink(url, Hub())
    await broker.connect()
    await sink.connect()
    await broker.publish([Outgoing("q", "m", b"")])
    await sink.store([StoredDocument("m", "SUCCESS", b"")], ttl=None)
    await broker.close()
    await sink.close()
    conn = sqlite3.connect(tmp_path / "celeriac.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM celeriac_messages").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM celeriac_documents").fetchone() == (1,)
    finally:
        conn.close()


async def test_many_producer_processes_and_a_consumer_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/celeriac.db"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([_IMPORT_ROOT, os.environ.get("PYTHONPATH", "")])
    )
    consumer = open_broker(url, Hub())
    await consumer.connect()
    seen: list[str] = []

    async def produce(name: str) -> None:
        result = await anyio.run_process([sys.executable, "-c", _PRODUCER, url, name], env=env)
        assert result.returncode == 0, result.stderr

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for name in ("a", "b", "c"):
                    tg.start_soon(produce, name)
                while len(seen) < 900:
                    got = await consumer.fetch(["q"], 100, 1.0)
                    await consumer.ack(got)
                    seen += [d.id for d in got]
    finally:
        await consumer.close()
    assert sorted(seen) == sorted(f"{p}-{n}" for p in "abc" for n in range(300))


async def test_a_waiting_fetch_sees_another_connections_commit_within_milliseconds(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/celeriac.db"
    consumer, producer = open_broker(url, Hub()), open_broker(url, Hub())
    await consumer.connect()
    await producer.connect()
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < 15:
            got = await consumer.fetch(["q"], 1, 5.0)
            latencies.append(time.time() - float(got[0].body))
            await consumer.ack(got)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for n in range(15):
                await anyio.sleep(0.01)
                await producer.publish([Outgoing("q", str(n), str(time.time()).encode())])
    finally:
        await consumer.close()
        await producer.close()
    assert statistics.median(latencies) < 0.05


async def test_sqlite_failures_are_broker_errors(tmp_path: Path) -> None:
    broker = SqliteBroker(f"sqlite:///{tmp_path}/missing-dir/x.db")
    with pytest.raises(BrokerError, match="unable to open database file") as info:
        await broker.connect()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await broker.close()


async def test_close_closes_every_connection(tmp_path: Path) -> None:
    broker = SqliteBroker(f"sqlite:///{tmp_path}/x.db")
    await broker.connect()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(broker.fetch, ["q"], 1, 0.05)
    await broker.close()
    assert broker._db._open == 0
    with pytest.raises(BrokerError, match="closed"):
        await broker.publish([Outgoing("q", "m", b"")])
    await broker.connect()  # and it can be opened again
    await broker.publish([Outgoing("q", "m", b"")])
    assert len(await broker.fetch(["q"], 1, 0)) == 1
    await broker.close()
