"""A chord's body runs exactly once when a worker is SIGKILLed in the middle of its header.

A chord of 1,000 members runs on two ``celeriac worker`` processes (asyncio and trio),
on SQLite and on Redis, with 2-second leases. Once about 300 members have recorded
that they ran, one worker is SIGKILLed, wherever it is: running members, storing
their outcomes, counting them into the chord's joins, publishing the body. A
replacement worker starts; the killed worker's messages come back when their leases
run out. Members may run twice; the body must run exactly once, with every
member's result, and the chord's result must be right.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from tests.router.canvas_app import make_app
from tests.router.cluster import BROKERS, cluster, drained
from tests.worker.helpers import lines

from celeriac import chord

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

MEMBERS = 1000
KILL_AFTER = 300  # members recorded done
LEASE = 2  # seconds: the killed worker's messages come back this soon


@pytest.fixture
def anyio_backend() -> str:
    """The test drives processes, which run on both loops themselves."""
    return "asyncio"


@pytest.mark.parametrize("kind", BROKERS)
async def test_chord_body_runs_exactly_once_when_a_worker_is_killed_mid_header(
    kind: str, tmp_path: Path
) -> None:
    # 5 members at once per worker, 20 ms each: the header takes seconds, not a blink.
    extra = ("--async-concurrency", "5", "--prefetch", "10")
    with cluster(kind, tmp_path, extra=extra, visibility_timeout=LEASE) as running:
        app = make_app(running.url)
        member, body = app.tasks["k.member"], app.tasks["k.body"]
        effects = running.effects

        def members_done() -> int:
            return sum(line.startswith("member") for line in lines(effects))

        async with app:
            canvas = chord([member.s(i, 0.02) for i in range(MEMBERS)], body.s())
            result = await app.start_async(canvas)
            with anyio.fail_after(60):
                while members_done() < KILL_AFTER:
                    await anyio.sleep(0.005)
            victim = running.workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            at_kill = lines(effects)
            running.spawn("asyncio")  # the replacement
            with anyio.fail_after(60):
                value = await result.get_async()
            await drained(app, timeout=60)  # nothing left that could run the body again

    assert value == sum(range(MEMBERS))
    assert not any(line.startswith("body") for line in at_kill)
    assert len({line.split()[1] for line in at_kill if line.startswith("member")}) < MEMBERS
    assert any(line.endswith(f" {victim.pid}") for line in at_kill), "the victim ran members"
    done = lines(effects)
    bodies = [line for line in done if line.startswith("body")]
    assert len(bodies) == 1, bodies
    assert bodies[0].split()[1] == str(MEMBERS)
    members = {int(line.split()[1]) for line in done if line.startswith("member")}
    assert members == set(range(MEMBERS))
