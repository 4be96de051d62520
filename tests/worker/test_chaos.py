"""Workers SIGKILLed at random moments while 2,000 tasks run: none lost, none run twice.

Each of 2,000 tasks is published once (tag ``a``); 200 of them are published a
second time (tag ``b``: a duplicate message of the same logical work, same dedupe
key). A worker process is started and SIGKILLed at random moments, again and
again, until every result is in. Then:

* every task completed: 2,000 results, each its own number; none lost;
* for every key, only one message ever ran (all of its ``done`` lines carry one
  tag): the duplicate was never run, even across kills and restarts;
* the message that lost the race for its key ended REVOKED as a duplicate.

A message cut short by a kill runs again (at least once); a run may repeat its
effect if the kill fell between its effect and its stored result — exactly-once
effects need idempotent tasks, see docs/failure-handling.md.
"""

from __future__ import annotations

import random
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.worker.brokers import short_lease_broker
from tests.worker.chaos_app import build
from tests.worker.helpers import spawn_worker, stop, wait_ready

from celeriac import TaskRevoked

pytestmark = pytest.mark.anyio

TASKS, DUPLICATES = 2000, 200


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A broker URL with a 1 s visibility timeout, on SQLite or on Redis (own prefix)."""
    with short_lease_broker(request.param, tmp_path, 1) as url:
        yield url


async def test_sigkilled_workers_lose_nothing_and_run_no_duplicate(
    broker: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    log = tmp_path / "workers.log"
    rng = random.Random(2026)
    app = build(broker)
    kills = 0
    async with app:
        originals = [app.send_task("chaos.work", (n, "a", str(effects))) for n in range(TASKS)]
        copies = [app.send_task("chaos.work", (n, "b", str(effects))) for n in range(DUPLICATES)]
        worker = spawn_worker(broker, app="tests.worker.chaos_app:app", log=log)
        try:
            with anyio.fail_after(240):
                # Kill the worker at random moments while the work runs: after it has
                # done another 50-250 tasks (by progress, not time: a fast worker
                # would otherwise finish between two kills).
                while _done_count(effects) < TASKS * 0.9 and kills < 8:
                    target = min(TASKS, _done_count(effects) + rng.randint(50, 250))
                    while _done_count(effects) < target:
                        await anyio.sleep(rng.uniform(0.001, 0.01))
                    worker.send_signal(signal.SIGKILL)
                    worker.wait()
                    kills += 1
                    worker = spawn_worker(broker, app="tests.worker.chaos_app:app", log=log)
                values = [await r for r in originals[DUPLICATES:]]
                firsts = [await _outcome(a) for a in originals[:DUPLICATES]]
                seconds = [await _outcome(b) for b in copies]
                # The last worker may have been started after the work was done.
                await wait_ready(worker, log)
        finally:
            code = stop(worker) if worker.poll() is None else worker.returncode
    assert code == 0, log.read_text()[-3000:]
    assert kills >= 3  # the workers really were killed, more than once
    assert values == list(range(DUPLICATES, TASKS))  # every task completed, none lost

    ran_by: dict[int, set[str]] = defaultdict(set)
    done_lines: dict[int, int] = defaultdict(int)
    for line in effects.read_text().splitlines():
        what, n, tag = line.split()
        if what == "done":
            ran_by[int(n)].add(tag)
            done_lines[int(n)] += 1
    assert set(ran_by) == set(range(TASKS))
    twice = {n: tags for n, tags in ran_by.items() if len(tags) > 1}
    assert twice == {}, f"duplicate messages ran: {twice}"
    # Of each duplicated pair, one message ran (its value) and the other is a duplicate.
    for n, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
        winner = "a" if first == n else "b"
        assert ran_by[n] == {winner}
        loser = second if winner == "a" else first
        assert isinstance(loser, TaskRevoked)
        assert "duplicate of" in str(loser)
    repeated = sum(1 for count in done_lines.values() if count > 1)
    print(f"{kills} kills; {repeated} task(s) repeated their effect after a kill")


def _done_count(effects: Path) -> int:
    if not effects.exists():
        return 0
    return effects.read_text().count("done ")


async def _outcome(result: object) -> object:
    try:
        return await result  # type: ignore[misc]
    except TaskRevoked as exc:
        return exc
