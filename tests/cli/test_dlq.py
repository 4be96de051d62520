"""``celeriac dlq``: dead letters made by a real worker process, handled from the command line.

Every test runs the CLI as a separate process (``python -m celeriac dlq ...``) on dead
letters that a real ``celeriac worker`` produced: a message for a task no worker has,
and a body that is not an envelope at all (published as raw bytes).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.worker.helpers import stop

from celeriac import App, UnknownTask
from celeriac.abc import DeadLetter, Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.testing.conformance import require_service

V1 = "tests.cli.dlq_app_v1:app"  # has no dlqtest.late
V2 = "tests.cli.dlq_app_v2:app"  # has it
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 4  # a database no other test uses
GARBAGE = b"\xff\x00not an envelope\x1b[2J" + bytes(range(40))
TIMEOUT = 30.0


@pytest.fixture(params=["sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh broker: a SQLite file, or a key prefix of its own on Redis database 4."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'x.db'}"
        return
    import redis

    require_service("redis", REDIS_HOST, REDIS_PORT)
    prefix = f"celeriac-dlq-{uuid.uuid4().hex[:12]}"
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}?prefix={prefix}"
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextmanager
def worker_process(
    broker: str, app: str, log: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``celeriac worker APP`` on ``broker`` for the block (its log in ``log``), then SIGTERM."""
    command = [sys.executable, "-m", "celeriac", "--log-format", "json", "worker", app]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=dict(os.environ, CELERIAC_BROKER=broker, **env), stdout=out, stderr=out
        )
        try:
            yield process
        finally:
            stop(process)


def dlq(broker: str, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``celeriac dlq ARGS`` with the app's broker set to ``broker``."""
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "--log-level", "WARNING", "dlq", *args],
        env=dict(os.environ, CELERIAC_BROKER=broker, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def on_broker(url: str, fn: Callable[[Any], Any]) -> Any:
    """``await fn(broker)`` on a broker connected to ``url`` for the call."""

    async def main() -> Any:
        broker = open_broker(url, Hub())
        await broker.connect()
        try:
            return await fn(broker)
        finally:
            await broker.close()

    return anyio.run(main)


def dead_letters(url: str) -> dict[str, DeadLetter]:
    return {d.id: d for d in on_broker(url, lambda b: b.dead_letters(1000))}


def publish_raw(url: str, body: bytes, queue: str = "default") -> str:
    """Publish ``body`` as it is (no envelope, no codec); return the message id."""
    msg_id = f"raw-{uuid.uuid4().hex[:8]}"
    on_broker(url, lambda b: b.publish([Outgoing(queue=queue, id=msg_id, body=body)]))
    return msg_id


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {TIMEOUT}s: {what}")
        time.sleep(0.05)


def listed(url: str, *extra: str) -> list[dict[str, Any]]:
    out = dlq(url, "list", V1, "--json", *extra)
    assert out.returncode == 0, out.stderr
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    return entries


def test_dead_letters_from_a_worker_are_listed_shown_replayed_and_purged(
    broker_url: str, tmp_path: Path
) -> None:
    producer = App("dlqtest", broker=broker_url)
    result = producer.send_task("dlqtest.late", [6, 7], {"note": "\x1b[31mred"})
    task_id = result.id
    raw_id = publish_raw(broker_url, GARBAGE)
    with worker_process(broker_url, app=V1, log=tmp_path / "worker-v1.log"):
        with pytest.raises(UnknownTask):
            result.get(timeout=TIMEOUT)
        wait_until(lambda: {task_id, raw_id} <= set(dead_letters(broker_url)), "2 dead letters")

    # list: both, newest first, the task name decoded where the body decodes
    table = dlq(broker_url, "list", V1)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "ID", "QUEUE", "TASK", "DELIVERIES", "WHEN", "(UTC)", "REASON"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert set(rows) == {task_id, raw_id}
    assert rows[task_id].split()[1:4] == ["default", "dlqtest.late", "1"]
    assert "UnknownTask: no task named 'dlqtest.late' here" in rows[task_id]
    assert rows[raw_id].split()[1:4] == ["default", "?", "1"]
    assert "DecodeError: not an envelope: body starts with byte 0xff" in rows[raw_id]
    entries = {e["id"]: e for e in listed(broker_url)}
    assert entries[task_id]["task"] == "dlqtest.late"
    assert entries[task_id]["reason"] == "UnknownTask: no task named 'dlqtest.late' here"
    assert entries[task_id]["deliveries"] == 1
    assert entries[task_id]["at"].endswith("Z")
    assert entries[raw_id]["task"] is None
    # the app can come from $CELERIAC_APP
    from_env = dlq(broker_url, "list", "--json", CELERIAC_APP=V1)
    assert {e["id"] for e in json.loads(from_env.stdout)} == {task_id, raw_id}

    # show: the envelope of one that decodes, the raw body of one that does not
    shown = dlq(broker_url, "show", V1, task_id)
    assert shown.returncode == 0, shown.stderr
    assert '"name": "dlqtest.late"' in shown.stdout
    assert "UnknownTask: no task named 'dlqtest.late' here" in shown.stdout
    assert "\x1b" not in shown.stdout  # an argument cannot drive the terminal
    as_json = json.loads(dlq(broker_url, "show", V1, task_id, "--json").stdout)
    assert as_json["envelope"]["args"] == [6, 7]
    assert as_json["envelope"]["kwargs"] == {"note": "\x1b[31mred"}
    assert as_json["envelope"]["attempt"] == 0
    assert as_json["decode_error"] is None
    raw = dlq(broker_url, "show", V1, raw_id)
    assert raw.returncode == 0, raw.stderr
    assert "task        ?" in raw.stdout
    assert "ff 00 6e 6f 74 20 61 6e" in raw.stdout  # a hex dump: the body is binary
    assert "\x1b" not in raw.stdout
    assert "\x00" not in raw.stdout
    raw_json = json.loads(dlq(broker_url, "show", V1, raw_id, "--json").stdout)
    assert raw_json["envelope"] is None
    assert base64.b64decode(raw_json["body_base64"]) == GARBAGE

    # bad input: a clear error, exit 1, and nothing changes
    missing = dlq(broker_url, "show", V1, "no-such-id")
    assert missing.returncode == 1
    assert "no dead letter with id 'no-such-id'" in missing.stderr
    assert set(dead_letters(broker_url)) == {task_id, raw_id}

    # replay: the known id goes back to its queue, the unknown one is reported
    replayed = dlq(broker_url, "replay", V1, task_id, "no-such-id")
    assert replayed.returncode == 1
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)"
    assert "not found: no-such-id" in replayed.stderr
    assert set(dead_letters(broker_url)) == {raw_id}
    # ... and once the task exists, it runs: its result replaces the UnknownTask failure
    with worker_process(broker_url, app=V2, log=tmp_path / "worker-v2.log"):
        wait_until(lambda: producer.result(task_id).state == "SUCCESS", "the replayed task ran")
    assert producer.result(task_id).get(timeout=TIMEOUT) == 42
    producer.close()

    # purge: asks first (no answer: nothing is deleted), then empties the store
    refused = dlq(broker_url, "purge", V1, stdin="n\n")
    assert refused.returncode == 1
    assert "Delete every dead letter" in refused.stdout
    assert set(dead_letters(broker_url)) == {raw_id}
    purged = dlq(broker_url, "purge", V1, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert dead_letters(broker_url) == {}
    assert listed(broker_url) == []


def test_every_broker_of_an_app_is_read_and_broker_picks_one(tmp_path: Path) -> None:
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    both = json.dumps([first, second])
    # The second broker serves the queue of the tasks routed to it: "elsewhere".
    routes = json.dumps({"dlqtest.ping": f"{second}#elsewhere"})
    on_first = publish_raw(first, b"first")
    on_second = publish_raw(second, b"second", queue="elsewhere")
    with worker_process(both, app=V1, log=tmp_path / "worker.log", CELERIAC_ROUTES=routes):
        wait_until(lambda: on_first in dead_letters(first), "a dead letter on the first broker")
        wait_until(lambda: on_second in dead_letters(second), "a dead letter on the second")

    table = dlq(both, "list", V1)
    assert table.stdout.splitlines()[0].split()[:2] == ["BROKER", "ID"]
    rows = {line.split()[1]: line.split()[0] for line in table.stdout.splitlines()[1:]}
    assert rows == {on_first: first, on_second: second}
    assert [e["id"] for e in listed(both, "--broker", second)] == [on_second]
    assert "body starts with byte 0x66" in dlq(both, "show", V1, on_first).stdout

    wrong = dlq(both, "list", V1, "--broker", "sqlite:///elsewhere.db")
    assert wrong.returncode == 2
    assert "is not a broker of this app" in wrong.stderr

    everything = dlq(both, "replay", V1, "--all", "--yes", "--broker", first)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.strip() == "replayed 1 dead letter(s)"
    assert dead_letters(first) == {}
    assert set(dead_letters(second)) == {on_second}
    ready = on_broker(first, lambda b: b.stats())
    assert ready["default"].ready == 1  # back in its queue, unchanged, for the next worker

    purged = dlq(both, "purge", V1, "--yes")
    assert purged.stdout.splitlines() == [
        "purged 1 dead letter(s)",
        f"  {first}: 0",
        f"  {second}: 1",
    ]


def test_replay_without_ids_or_with_both_is_a_usage_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    kept = publish_raw(url, b"{}")
    with worker_process(url, app=V1, log=tmp_path / "worker.log"):
        wait_until(lambda: kept in dead_letters(url), "a dead letter")
    for args in ([], [kept, "--all"]):
        out = dlq(url, "replay", V1, *args)
        assert out.returncode == 2
        assert "give dead-letter ids, or --all" in out.stderr
    unanswered = dlq(url, "replay", V1, "--all")  # asks; no answer means no
    assert unanswered.returncode == 1
    assert set(dead_letters(url)) == {kept}


def test_a_replay_fetched_by_the_worker_that_dead_lettered_it_is_not_lost(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    producer = App("dlqtest", broker=url)
    with worker_process(url, app=V1, log=tmp_path / "worker.log"):
        task_id = producer.send_task("dlqtest.late", [1, 2]).id
        producer.close()
        wait_until(lambda: task_id in dead_letters(url), "the dead letter")
        assert dlq(url, "replay", V1, task_id).returncode == 0

        def settled() -> bool:
            stats = on_broker(url, lambda b: b.stats())["default"]
            return bool(stats.ready == 0 and stats.in_flight == 0)

        wait_until(settled, "the replayed message settled")
    # The worker still has no such task: the message must be a dead letter again.
    assert task_id in dead_letters(url)
