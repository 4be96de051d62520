"""Both backlogs keep order and give-back; the SQLite one keeps messages across processes."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.publisher._support import db_path, fetch_ids, write_locked

from celeriac.abc import Outgoing
from celeriac.errors import ConfigurationError
from celeriac.publisher import MemoryBacklog, Ticket, open_backlog
from celeriac.publisher.backlog import Backlog
from celeriac.publisher.disk import SqliteBacklog

URL = "memory://backlog-test"


def ticket(n: int, url: str = URL) -> Ticket:
    return Ticket(url, Outgoing(queue="q", id=f"m{n}", body=b"body-%d" % n, priority=n % 10))


def ids(tickets: list[Ticket]) -> list[str]:
    return [t.message.id for t in tickets if t.message is not None]


@pytest.fixture(params=["memory", "sqlite"])
def backlog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backlog]:
    made: Backlog = MemoryBacklog() if request.param == "memory" else SqliteBacklog(tmp_path / "b")
    made.open([URL])
    yield made
    made.close()


def rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        found = conn.execute(
            "SELECT message_id, owner FROM celeriac_backlog ORDER BY id"
        ).fetchall()
        return [(str(m), str(o)) for m, o in found]
    finally:
        conn.close()


# -- both kinds --------------------------------------------------------------------------


def test_messages_come_out_oldest_first(backlog: Backlog) -> None:
    for n in range(10):
        backlog.append(ticket(n))
    assert len(backlog) == 10
    assert ids(backlog.take(4)) == ["m0", "m1", "m2", "m3"]
    assert ids(backlog.take(100)) == [f"m{n}" for n in range(4, 10)]
    assert backlog.take(5) == []
    assert len(backlog) == 0


def test_a_batch_given_back_goes_to_the_front_in_its_order(backlog: Backlog) -> None:
    for n in range(6):
        backlog.append(ticket(n))
    batch = backlog.take(3)
    backlog.append(ticket(6))  # submitted while the batch was out
    backlog.give_back(batch)
    assert ids(backlog.take(10)) == ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]


def test_appends_from_many_threads_all_arrive(backlog: Backlog) -> None:
    def produce(start: int) -> None:
        for n in range(start, start + 200):
            backlog.append(ticket(n))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for start in range(0, 800, 200):
                tg.start_soon(anyio.to_thread.run_sync, produce, start)

    anyio.run(main)
    taken = ids(backlog.take(1000))
    assert sorted(taken) == sorted(f"m{n}" for n in range(800))
    for start in range(0, 800, 200):  # each thread's messages stay in its order
        mine = [i for i in taken if start <= int(i[1:]) < start + 200]
        assert mine == [f"m{n}" for n in range(start, start + 200)]


# -- the setting -------------------------------------------------------------------------


def test_the_setting_names_the_kind(tmp_path: Path) -> None:
    assert type(open_backlog(None)) is MemoryBacklog
    assert type(open_backlog("memory://")) is MemoryBacklog
    plain = open_backlog(str(tmp_path / "a.db"))
    assert isinstance(plain, SqliteBacklog)
    assert plain.path == str(tmp_path / "a.db")
    url = open_backlog(f"sqlite:///{tmp_path}/b.db?synchronous=full")
    assert isinstance(url, SqliteBacklog)
    assert url.synchronous == "FULL"
    with pytest.raises(ConfigurationError, match="unknown option"):
        open_backlog(f"sqlite:///{tmp_path}/c.db?sync=full")
    with pytest.raises(ConfigurationError, match="publisher_backlog"):
        open_backlog("redis://127.0.0.1/0")


# -- the SQLite file ---------------------------------------------------------------------


def test_a_row_is_written_on_append_and_deleted_only_when_removed(tmp_path: Path) -> None:
    path = tmp_path / "b"
    backlog = SqliteBacklog(path)
    backlog.open([URL])
    try:
        for n in range(5):
            backlog.append(ticket(n))
        assert [m for m, _ in rows(path)] == ["m0", "m1", "m2", "m3", "m4"]
        batch = backlog.take(3)
        assert len(rows(path)) == 5  # taken is not sent
        anyio.run(backlog.remove, batch[:2])
        assert [m for m, _ in rows(path)] == ["m2", "m3", "m4"]
    finally:
        backlog.close()


def test_what_a_closed_backlog_did_not_send_is_sent_first_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "b"
    first = SqliteBacklog(path)
    first.open([URL])
    for n in range(5):
        first.append(ticket(n))
    anyio.run(first.remove, first.take(2))
    first.close()

    second = SqliteBacklog(path)
    second.open([URL])
    try:
        assert second.recovered == 3
        second.append(ticket(9))
        taken = second.take(10)
        assert ids(taken) == ["m2", "m3", "m4", "m9"]
        assert taken[0].message == ticket(2).message  # queue, id, body, priority, eta
        assert {o for _, o in rows(path)} == {second.owner}
    finally:
        second.close()


def test_a_live_backlog_keeps_its_rows_from_another_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "b"
    alive = SqliteBacklog(path)
    alive.open([URL])
    alive.append(ticket(1))
    other = SqliteBacklog(path)
    other.open([URL])
    try:
        assert other.recovered == 0
        assert len(other) == 0
        other.append(ticket(2))
        assert [(m, o) for m, o in rows(path)] == [("m1", alive.owner), ("m2", other.owner)]
    finally:
        other.close()
        alive.close()


def test_rows_for_a_broker_this_app_does_not_use_stay_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b"
    first = SqliteBacklog(path)
    first.open([URL, "memory://elsewhere"])
    first.append(ticket(1, "memory://elsewhere"))
    first.append(ticket(2))
    first.close()
    second = SqliteBacklog(path)
    second.open([URL])
    try:
        assert ids(second.take(10)) == ["m2"]
        assert [m for m, _ in rows(path)] == ["m1", "m2"]
    finally:
        second.close()
    third = SqliteBacklog(path)
    third.open([URL, "memory://elsewhere"])
    try:
        assert ids(third.take(10)) == ["m1", "m2"]
    finally:
        third.close()


def test_when_the_file_cannot_be_written_messages_stay_in_memory_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "celeriac.publisher")
    path = tmp_path / "b"
    backlog = SqliteBacklog(path, busy_timeout=0.05)
    backlog.open([URL])
    try:
        backlog.append(ticket(0))
        with write_locked(str(path)):
            backlog.append(ticket(1))
            backlog.append(ticket(2))
        backlog.append(ticket(3))
        taken = backlog.take(10)
        assert ids(taken) == ["m0", "m1", "m2", "m3"]
        assert [t.row is None for t in taken] == [False, True, True, False]
        assert [m for m, _ in rows(path)] == ["m0", "m3"]
        warnings = [r for r in caplog.records if "cannot write to the backlog" in r.message]
        assert len(warnings) == 1  # once per episode, not once per message
        assert any("works again" in r.message for r in caplog.records)
    finally:
        backlog.close()


# -- a crash of the publishing process ---------------------------------------------------

_PRODUCER = """
import json, sys, time
from celeriac import App

broker, backlog, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = App("crash", broker=broker, publisher_backlog=backlog)
assert app.send_task("crash.first", ignore_result=True).confirmed(timeout=30)
print("ready", flush=True)
sys.stdin.readline()  # the broker is locked now
ids = [app.send_task("crash.task", args=(i,), ignore_result=True).id for i in range(count)]
print(json.dumps(ids), flush=True)
time.sleep(600)
"""

_SUCCESSOR = """
import sys
from celeriac import App

app = App("crash", broker=sys.argv[1], publisher_backlog=sys.argv[2])
last = app.send_task("crash.last", ignore_result=True)
assert last.confirmed(timeout=60)
print(last.id, flush=True)
app.close()
"""


def test_messages_of_a_killed_producer_are_sent_oldest_first_by_the_next_process(
    sqlite_url: str, tmp_path: Path
) -> None:
    count = 500
    backlog = tmp_path / "backlog.db"
    with subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, sqlite_url, str(backlog), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as producer:
        assert producer.stdin is not None
        assert producer.stdout is not None
        try:
            assert producer.stdout.readline().strip() == "ready"
            with write_locked(db_path(sqlite_url)):  # the broker accepts nothing now
                producer.stdin.write("\n")
                producer.stdin.flush()
                sent = json.loads(producer.stdout.readline())
                producer.send_signal(signal.SIGKILL)
                assert producer.wait(30) == -signal.SIGKILL
        finally:
            if producer.poll() is None:
                producer.kill()
    assert len(sent) == count
    assert [m for m, _ in rows(backlog)] == sent  # every append was on disk before the kill

    successor = subprocess.run(
        [sys.executable, "-c", _SUCCESSOR, sqlite_url, str(backlog)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert successor.returncode == 0, successor.stderr
    last = successor.stdout.strip()
    got = fetch_ids(sqlite_url, "default", [*sent, last])
    assert got[1:] == [*sent, last]  # got[0] is crash.first; nothing twice, oldest first
    assert rows(backlog) == []
