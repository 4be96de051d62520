"""The coordinator contract (:class:`celeriac.abc.Coordinator`) as tests, for every backend.

Subclass :class:`CoordinatorConformance` in a test module and provide a
``coordinator_url`` fixture naming a fresh, empty store for each test (a Redis
prefix, a PostgreSQL schema, a SQLite file of the test's own)::

    from celeriac.testing.coordination import CoordinatorConformance
    from celeriac.testing.conformance import require_service

    class TestMyCoordinator(CoordinatorConformance):
        @pytest.fixture
        def coordinator_url(self) -> str:
            require_service("mystore", "127.0.0.1", 7777)
            return f"mystore://127.0.0.1:7777/?namespace={uuid.uuid4().hex}"

The backend is opened through :func:`celeriac.coordination.open_coordinator`. Each
test opens two instances on the store (as two workers would) and checks that they
see one state. Tests are marked ``anyio``; define an ``anyio_backend`` fixture
(``asyncio``, ``trio``) in your ``conftest.py``. Durations are read from the
store's clock (:meth:`~celeriac.abc.Coordinator.time`), and every bound asserted
is one the contract guarantees whatever the machine's load, except where a test
says how much slack it allows. About 9 s per backend and event loop, most of it
waiting for short ttls to run out and for the rate-limit window.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ClassVar

import anyio
import pytest

from celeriac.abc import Coordinator
from celeriac.brokers import Hub
from celeriac.coordination import open_coordinator

__all__ = ["CoordinatorConformance"]


async def _gather(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` concurrently; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return results


class CoordinatorConformance:
    """The :class:`~celeriac.abc.Coordinator` contract; subclass and provide ``coordinator_url``."""

    pytestmark = pytest.mark.anyio

    #: a ttl (seconds) that the tests let run out; raise it for a slow store
    short: ClassVar[float] = 0.6
    #: what the tests wait for a :attr:`short` ttl to run out
    pause: ClassVar[float] = 1.0

    @pytest.fixture
    def coordinator_url(self) -> str:
        """A URL naming a fresh, empty store for this test (override this)."""
        raise NotImplementedError("provide a coordinator_url fixture")

    @pytest.fixture
    def hub(self) -> Hub:
        """The hub every coordinator of one test is opened with (as one App would)."""
        return Hub()

    @pytest.fixture
    def key(self) -> str:
        """A key of this test's own."""
        return f"k-{uuid.uuid4().hex[:10]}"

    @asynccontextmanager
    async def opened(self, url: str, hub: Hub) -> AsyncIterator[Coordinator]:
        """A connected coordinator for ``url``, closed on exit."""
        coordinator = open_coordinator(url, hub)
        await coordinator.connect()
        try:
            yield coordinator
        finally:
            with anyio.CancelScope(shield=True):
                await coordinator.close()

    @pytest.fixture
    async def coordinator(self, coordinator_url: str, hub: Hub) -> AsyncIterator[Coordinator]:
        """A connected coordinator on this test's store."""
        async with self.opened(coordinator_url, hub) as coordinator:
            yield coordinator

    @pytest.fixture
    async def other(self, coordinator_url: str, hub: Hub) -> AsyncIterator[Coordinator]:
        """A second instance on the same store (another worker, say)."""
        async with self.opened(coordinator_url, hub) as coordinator:
            yield coordinator

    # -- the clock -----------------------------------------------------------------------

    async def test_the_clock_is_unix_seconds_and_never_goes_back(
        self, coordinator: Coordinator, other: Coordinator
    ) -> None:
        readings = [await c.time() for c in (coordinator, other, coordinator, other)]
        assert readings[0] > 1_600_000_000
        assert readings == sorted(readings)

    # -- counters ------------------------------------------------------------------------

    async def test_a_counter_starts_at_zero_and_returns_each_new_value(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.add(key, 0, None) == 0
        assert await coordinator.add(key, 5, None) == 5
        assert await other.add(key, -7, None) == -2
        assert await coordinator.add(key, 0, 60) == -2
        assert await other.add(key + "-other", 1, None) == 1

    async def test_fifty_concurrent_adds_from_two_instances_each_see_a_new_value(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        instances = [coordinator, other] * 25
        calls = [partial(c.add, key, 1, 60) for c in instances]
        assert sorted(await _gather(calls)) == list(range(1, 51))
        assert await other.add(key, 0, 60) == 50

    async def test_every_add_sets_the_counters_expiry_anew(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        expiring, shortened, kept = key + "-a", key + "-b", key + "-c"
        await coordinator.add(expiring, 3, self.short)
        await coordinator.add(shortened, 3, 60)
        await other.add(shortened, 1, self.short)
        await coordinator.add(kept, 3, self.short)
        assert await other.add(kept, 1, None) == 4
        await anyio.sleep(self.pause)
        assert await coordinator.add(expiring, 1, None) == 1  # started again at 0
        assert await other.add(shortened, 0, None) == 0
        assert await coordinator.add(kept, 0, None) == 4

    async def test_each_primitive_has_keys_of_its_own(
        self, coordinator: Coordinator, key: str
    ) -> None:
        assert await coordinator.add(key, 7, 60) == 7
        assert await coordinator.tally(key, "m", 60) == 1
        assert await coordinator.claim(key, "owner", 60) == "owner"
        assert await coordinator.acquire(key, "holder", 1, 60)
        assert await coordinator.throttle(key, 1.0, 1) == 0.0
        assert await coordinator.add(key, 0, 60) == 7
        assert await coordinator.holding(key) == 1

    # -- tallies -------------------------------------------------------------------------

    async def test_a_tally_counts_each_member_once(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.tally(key, "a", None) == 1
        assert await other.tally(key, "b", None) == 2
        assert await coordinator.tally(key, "a", None) == 2  # redelivered: not counted again
        assert await other.tally(key + "-other", "a", None) == 1

    async def test_concurrent_tallies_with_repeats_count_distinct_members(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        members = [f"m{n}" for n in range(50)] * 2  # every member twice, from both instances
        calls = [
            partial(c.tally, key, m, 60)
            for c, m in zip([coordinator, other] * 50, members, strict=True)
        ]
        counts = await _gather(calls)
        assert max(counts) == 50
        assert set(range(1, 51)) <= set(counts)  # each new member made the count grow by one
        assert await coordinator.tally(key, "m0", 60) == 50

    async def test_a_tally_counts_a_batch_of_members_in_one_call(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.tally(key, ["a", "b", "a"], None) == 2
        assert await other.tally(key, ["b", "c"], None) == 3  # b again: counted once
        assert await coordinator.tally(key, "c", None) == 3
        many = [f"m{n}" for n in range(2500)]  # more than one script or statement's worth
        assert await other.tally(key + "-many", many, 60) == 2500
        with pytest.raises(ValueError, match="member"):
            await coordinator.tally(key, [], None)

    async def test_an_expired_tally_starts_again_empty(
        self, coordinator: Coordinator, key: str
    ) -> None:
        await coordinator.tally(key, "a", self.short)
        await coordinator.tally(key, "b", self.short)
        await anyio.sleep(self.pause)
        assert await coordinator.tally(key, "a", None) == 1

    # -- claims --------------------------------------------------------------------------

    async def test_the_first_claim_wins_and_others_see_its_owner(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.claim(key, "a", 60) == "a"
        assert await other.claim(key, "b", 60) == "a"
        assert await other.claim(key, "a", 60) == "a"  # the holder again: still its own
        assert await coordinator.claim(key + "-other", "b", 60) == "b"

    async def test_concurrent_claims_have_exactly_one_winner(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        owners = [f"owner-{n}" for n in range(20)]
        calls = [
            partial(c.claim, key, o, 60)
            for c, o in zip([coordinator, other] * 10, owners, strict=True)
        ]
        holders = set(await _gather(calls))
        assert len(holders) == 1
        assert holders <= set(owners)

    async def test_a_claim_is_free_once_its_ttl_runs_out_and_its_holder_can_extend_it(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        lapsing, extended = key + "-a", key + "-b"
        assert await coordinator.claim(lapsing, "a", self.short) == "a"
        assert await coordinator.claim(extended, "a", self.short) == "a"
        assert await coordinator.claim(extended, "a", 60) == "a"  # re-claimed: extended
        assert await other.claim(lapsing, "b", 60) == "a"
        await anyio.sleep(self.pause)
        assert await other.claim(lapsing, "b", 60) == "b"
        assert await other.claim(extended, "b", 60) == "a"

    async def test_a_holder_gives_its_claim_up_with_a_zero_ttl(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.claim(key, "a", 60) == "a"
        assert await other.claim(key, "b", 0) == "a"  # not the holder: nothing changes
        assert await other.claim(key, "b", 60) == "a"
        assert await coordinator.claim(key, "a", 0) == "a"
        assert await other.claim(key, "b", 60) == "b"

    # -- semaphores ----------------------------------------------------------------------

    async def test_acquire_takes_up_to_limit_slots_and_release_frees_one(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.acquire(key, "a", 2, 60)
        assert await other.acquire(key, "b", 2, 60)
        assert not await other.acquire(key, "c", 2, 60)
        assert await coordinator.holding(key) == 2
        await other.release(key, "c")  # holds nothing: changes nothing
        assert await other.holding(key) == 2
        await other.release(key, "a")
        assert await coordinator.holding(key) == 1
        assert await coordinator.acquire(key, "c", 2, 60)
        assert not await coordinator.acquire(key, "d", 2, 60)
        assert await other.holding(key + "-other") == 0

    async def test_a_holder_renews_its_lease_even_when_the_limit_is_reached_or_lowered(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.acquire(key, "a", 2, self.short)
        assert await coordinator.acquire(key, "b", 2, 60)
        assert await other.acquire(key, "a", 1, 60)  # renewed, though 2 > 1 are taken now
        assert not await other.acquire(key, "c", 1, 60)
        assert not await other.acquire(key, "c", 0, 60)  # a limit of 0 admits no one new
        await anyio.sleep(self.pause)
        assert await coordinator.holding(key) == 2  # "a" was renewed for 60 s

    async def test_a_lease_that_is_not_renewed_frees_its_slot_after_its_ttl(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        assert await coordinator.acquire(key, "vanished", 2, self.short)  # never released
        assert await coordinator.acquire(key, "alive", 2, 60)
        assert not await other.acquire(key, "waiting", 2, 60)
        await anyio.sleep(self.pause)
        assert await other.holding(key) == 1
        assert await other.acquire(key, "waiting", 2, 60)
        assert await other.holding(key) == 2

    async def test_of_many_concurrent_acquirers_exactly_limit_win(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        calls = [
            partial(c.acquire, key, f"h{n}", 3, 60) for n, c in enumerate([coordinator, other] * 10)
        ]
        assert sum(await _gather(calls)) == 3
        assert await coordinator.holding(key) == 3

    async def test_many_acquirers_in_a_loop_never_exceed_the_limit(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        limit, inside, most = 3, 0, 0

        async def work(c: Coordinator, name: str) -> None:
            nonlocal inside, most
            for _ in range(4):
                while not await c.acquire(key, name, limit, 60):
                    await anyio.sleep(0.002)
                inside += 1
                most = max(most, inside)
                await anyio.sleep(0.005)
                inside -= 1
                await c.release(key, name)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n, c in enumerate([coordinator, other] * 6):
                    tg.start_soon(work, c, f"worker-{n}")
        assert most == limit  # reached, never passed
        assert await coordinator.holding(key) == 0

    # -- rate limits ---------------------------------------------------------------------

    async def test_a_burst_goes_at_once_then_the_next_unit_must_wait(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        rate, burst = 0.1, 5  # one unit per 10 s: no unit comes back during the test
        answers = [await c.throttle(key, rate, burst) for c in [coordinator, other] * 4]
        assert answers[:burst] == [0.0] * burst
        assert all(0 < wait <= 1 / rate for wait in answers[burst:])
        assert await other.throttle(key + "-other", rate, burst) == 0.0

    async def test_a_caller_that_waits_as_told_is_admitted(
        self, coordinator: Coordinator, key: str
    ) -> None:
        rate = 5.0
        assert await coordinator.throttle(key, rate, 1) == 0.0
        for _ in range(3):
            wait = await coordinator.throttle(key, rate, 1)
            assert 0 < wait <= 1 / rate
            await anyio.sleep(wait + 0.002)  # the store's clock may tick a hair slower
            assert await coordinator.throttle(key, rate, 1) == 0.0

    async def test_a_slot_is_reserved_ahead_and_late_callers_lose_no_capacity(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        rate, interval = 1.0, 1.0
        # Within one interval ahead, each answer is the wait until the unit's own slot,
        # and the unit is counted: slots follow one another exactly one interval apart.
        # With the first unit asked for at t0 >= began and the later ones at most
        # ``elapsed`` after began, the answers are bounded both ways; the calls need
        # only finish within the interval (one second).
        began = await coordinator.time()
        first = await coordinator.throttle(key, rate, 1, interval)
        second = await other.throttle(key, rate, 1, interval)  # t0 + interval - t1
        # The next slot is two intervals off: refused, uncounted, and the answer (more
        # than ``ahead``) says when that slot is due; asked again, the same slot.
        third = await coordinator.throttle(key, rate, 1, interval)  # t0 + 2 interval - t2
        again = await coordinator.throttle(key, rate, 1, interval)
        elapsed = await coordinator.time() - began
        slack = 0.001  # the store keeps whole microseconds
        assert first == 0.0
        assert interval - elapsed - slack <= second <= interval
        assert max(interval, 2 * interval - elapsed - slack) < third <= 2 * interval
        assert max(interval, 2 * interval - elapsed - slack) < again <= third
        # A caller that comes back late (0.1 s after its slot) still gets the slot
        # right after the reserved one: the schedule did not move with its lateness.
        await anyio.sleep(second + 0.1)
        fourth = await other.throttle(key, rate, 1, interval)
        assert 0.0 <= fourth <= interval - 0.05
        with pytest.raises(ValueError, match="ahead"):
            await coordinator.throttle(key, rate, 1, -1.0)

    async def test_a_rate_limit_admits_burst_then_rate_per_second_across_instances(
        self, coordinator: Coordinator, other: Coordinator, key: str
    ) -> None:
        # Four callers on two instances ask as fast as they are told they may, for
        # two seconds. GCRA admits at most burst + rate * t in any t seconds of the
        # store's clock: every unit counted here was admitted between the two
        # readings, so that bound holds exactly, however loaded the machine. The
        # lower bound is liveness only: callers lose what a stall of the whole
        # process costs them (beyond (burst - 1) / rate, 180 ms), so 70 % of the
        # window's rate leaves room for a stall of about a second, while a limiter
        # admitting at half the rate (burst + 50) falls short of it.
        rate, burst, window, admitted = 50.0, 10, 2.0, 0
        began = await coordinator.time()
        deadline = anyio.current_time() + window

        async def ask(c: Coordinator) -> None:
            nonlocal admitted
            while anyio.current_time() < deadline:
                wait = await c.throttle(key, rate, burst)
                if wait == 0.0:
                    admitted += 1
                else:
                    await anyio.sleep(min(wait, max(0.0, deadline - anyio.current_time())))

        async with anyio.create_task_group() as tg:
            for c in [coordinator, other] * 2:
                tg.start_soon(ask, c)
        span = await coordinator.time() - began  # the last answers may come after the deadline
        assert admitted <= rate * span + burst + 1
        assert admitted >= 0.7 * rate * window

    # -- arguments -----------------------------------------------------------------------

    async def test_arguments_out_of_range_are_refused(
        self, coordinator: Coordinator, key: str
    ) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await coordinator.add(key, 1, -1)
        with pytest.raises(ValueError, match="ttl"):
            await coordinator.claim(key, "a", float("nan"))
        with pytest.raises(ValueError, match="limit"):
            await coordinator.acquire(key, "a", -1, 60)
        with pytest.raises(ValueError, match="rate"):
            await coordinator.throttle(key, 0, 1)
        with pytest.raises(ValueError, match="burst"):
            await coordinator.throttle(key, 1, 0)
