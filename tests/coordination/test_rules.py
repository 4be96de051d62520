"""GCRA's arithmetic (no I/O, no sleeping), the scheme registry, and the memory backend's clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.abc import Coordinator, Outgoing
from celeriac.brokers import Hub, open_broker
from celeriac.coordination import coordinator_schemes, open_coordinator
from celeriac.coordination._rules import check_rate, gcra, interval_us
from celeriac.coordination.memory import MemoryCoordinator
from celeriac.errors import BrokerError, ConfigurationError

# -- GCRA (whole microseconds) ------------------------------------------------------------

intervals = st.integers(min_value=1, max_value=10_000_000)  # 0.1 to 1,000,000 per second
bursts = st.integers(min_value=1, max_value=20)
epochs = st.integers(min_value=0, max_value=2_000_000_000_000_000)  # up to the year 2033
offsets = st.lists(st.integers(min_value=0, max_value=100_000_000), min_size=1, max_size=200)

Refusal = tuple[int | None, int, int]  # (tat, now, wait)


def _run(times: list[int], interval: int, burst: int) -> tuple[list[int], list[Refusal]]:
    """Ask once at each of ``times`` (sorted): the admitted times, and each refusal's state."""
    tat: int | None = None
    admitted: list[int] = []
    refused: list[Refusal] = []
    for now in sorted(times):
        wait, new_tat = gcra(tat, now, interval, burst)
        if new_tat is None:
            assert wait >= 1
            refused.append((tat, now, wait))
        else:
            assert wait == 0
            admitted.append(now)
            tat = new_tat
    return admitted, refused


@given(epochs, offsets, intervals, bursts)
def test_gcra_never_admits_more_than_burst_plus_rate_times_any_span(
    epoch: int, times: list[int], interval: int, burst: int
) -> None:
    admitted, _ = _run([epoch + t for t in times], interval, burst)
    for i, first in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert (j - i + 1) <= burst + (admitted[j] - first) / interval


@given(epochs, offsets, intervals, bursts)
def test_gcra_admits_a_refused_caller_that_waits_as_told_and_not_sooner(
    epoch: int, times: list[int], interval: int, burst: int
) -> None:
    _, refused = _run([epoch + t for t in times], interval, burst)
    for tat, now, wait in refused:
        assert gcra(tat, now + wait, interval, burst)[0] == 0
        assert gcra(tat, now + wait - 1, interval, burst) == (1, None)


@given(epochs, intervals, bursts)
def test_gcra_lets_a_burst_through_at_once_then_one_unit_per_interval(
    now: int, interval: int, burst: int
) -> None:
    tat: int | None = None
    for _ in range(burst):
        wait, tat = gcra(tat, now, interval, burst)
        assert wait == 0
    assert gcra(tat, now, interval, burst) == (interval, None)
    assert gcra(tat, now + interval, interval, burst)[0] == 0


def _reserve(times: list[int], interval: int, burst: int, ahead: int) -> list[int]:
    """Ask at each of ``times`` with ``ahead``: the slot times of the units counted."""
    tat: int | None = None
    slots: list[int] = []
    for now in sorted(times):
        wait, new_tat = gcra(tat, now, interval, burst, ahead)
        if new_tat is None:
            assert wait > ahead  # refused: never mistaken for a reservation
        else:
            assert 0 <= wait <= ahead
            slots.append(now + wait)
            tat = new_tat
    return slots


@given(epochs, offsets, intervals, bursts, st.integers(min_value=0, max_value=20_000_000))
def test_gcra_reserved_slots_never_exceed_burst_plus_rate_times_any_span(
    epoch: int, times: list[int], interval: int, burst: int, ahead: int
) -> None:
    slots = _reserve([epoch + t for t in times], interval, burst, ahead)
    assert slots == sorted(slots)
    for i, first in enumerate(slots):
        for j in range(i, len(slots)):
            assert (j - i + 1) <= burst + (slots[j] - first) / interval


def test_gcra_reserving_ahead_loses_nothing_to_late_callers() -> None:
    # Callers that come back 3 ms after their slot, at 20 a second for 10 s: asking
    # plainly, every late return moves the schedule; reserving one interval ahead, the
    # store keeps one slot per interval.
    interval, late = 50_000, 3_000

    def run(ahead: int) -> int:
        tat: int | None = None
        now, admitted = 0, 0
        while now < 10_000_000:
            wait, new_tat = gcra(tat, now, interval, 1, ahead)
            if new_tat is not None:
                admitted, tat = admitted + 1, new_tat
                now += wait + late  # runs at its slot, returns late to ask again
            else:
                now += wait - ahead + late
        return admitted

    assert run(ahead=0) < 190
    assert run(ahead=interval) in (200, 201)  # one slot per interval over 10 s, both ends


def test_gcra_forgets_an_idle_spell_only_up_to_the_burst() -> None:
    second = 1_000_000
    tat: int | None = None
    for _ in range(3):
        _, tat = gcra(tat, 0, second, 3)
    waits = []
    for _ in range(4):  # 100 s later: 100 units' worth of time, but only 3 go at once
        wait, new_tat = gcra(tat, 100 * second, second, 3)
        waits.append(wait)
        tat = new_tat if new_tat is not None else tat
    assert waits == [0, 0, 0, second]


def test_rates_become_whole_microsecond_intervals() -> None:
    assert [interval_us(r) for r in (1, 3, 50, 1_000_000)] == [1_000_000, 333_333, 20_000, 1]
    for bad in (0, -1, 1_000_001, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate"):
            check_rate(bad, 1)


# -- the memory backend on a virtual clock ---------------------------------------------


@pytest.mark.anyio
async def test_memory_leases_claims_and_rates_follow_an_injected_clock() -> None:
    now = [1000.0]
    c = MemoryCoordinator("memory://", Hub(), clock=lambda: now[0])
    await c.connect()
    assert await c.time() == 1000.0
    assert await c.acquire("s", "a", 1, ttl=30)
    assert await c.claim("c", "a", ttl=30) == "a"
    assert await c.throttle("t", rate=2.0, burst=1) == 0.0
    assert await c.throttle("t", rate=2.0, burst=1) == 0.5
    now[0] += 29.9
    assert not await c.acquire("s", "b", 1, ttl=30)
    assert await c.claim("c", "b", ttl=30) == "a"
    assert await c.throttle("t", rate=2.0, burst=1) == 0.0
    now[0] += 0.1
    assert await c.acquire("s", "b", 1, ttl=30)
    assert await c.claim("c", "b", ttl=30) == "b"


@pytest.mark.anyio
async def test_memory_coordinators_share_state_per_hub_and_name_only() -> None:
    hub = Hub()
    a, same, named = (MemoryCoordinator(u, hub) for u in ("memory://", "memory://", "memory://x"))
    elsewhere = MemoryCoordinator("memory://", Hub())
    assert await a.add("n", 1, None) == 1
    assert await same.add("n", 1, None) == 2
    assert await named.add("n", 1, None) == 1
    assert await elsewhere.add("n", 1, None) == 1
    await a.close()
    with pytest.raises(BrokerError, match="closed"):
        await a.add("n", 1, None)


# -- the registry ----------------------------------------------------------------------


def test_every_built_in_coordinator_is_a_coordinator(tmp_path: Path) -> None:
    assert {"memory", "sqlite", "redis", "rediss", "postgresql", "postgres"} <= set(
        coordinator_schemes()
    )
    urls = [
        "memory://",
        f"sqlite:///{tmp_path / 'c.db'}",
        "redis://127.0.0.1:6379/0?prefix=app",
        "postgresql://postgres@127.0.0.1/test?schema=app",
    ]
    for url in urls:
        assert isinstance(open_coordinator(url, Hub()), Coordinator)


def test_a_brokers_url_serves_its_coordinator_as_it_is(tmp_path: Path) -> None:
    for url in [
        "memory://?visibility_timeout=5",
        f"sqlite:///{tmp_path / 'c.db'}?visibility_timeout=5&poll_interval=0.001&busy_timeout=2",
        "redis://127.0.0.1:6379/0?prefix=app&visibility_timeout=5",
        "postgresql://postgres@127.0.0.1/test?schema=app&visibility_timeout=5&poll_interval=1",
    ]:
        open_coordinator(url, Hub())
    with pytest.raises(ConfigurationError, match="unknown option"):
        open_coordinator("redis://127.0.0.1:6379/0?prefx=app", Hub())


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "amqp://guest:guest@127.0.0.1/"])
def test_brokers_with_no_coordinator_ask_for_a_coordinator_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="name a coordinator URL"):
        open_coordinator(url, Hub())


def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"no coordinator backend for kafka://.*redis://"):
        open_coordinator("kafka://127.0.0.1", Hub())


@pytest.mark.anyio
async def test_the_sqlite_coordinator_lives_in_the_brokers_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'celeriac.db'}?visibility_timeout=5"
    broker, coordinator = open_broker(url, Hub()), open_coordinator(url, Hub())
    await broker.connect()
    await coordinator.connect()
    try:
        await broker.publish([Outgoing("q", "m1", b"body")])
        assert await coordinator.add("n", 2, None) == 2
        [delivery] = await broker.fetch(["q"], 1, 1.0)
        assert delivery.id == "m1"
    finally:
        await coordinator.close()
        await broker.close()
    again = open_coordinator(url, Hub())
    await again.connect()
    try:
        assert await again.add("n", 0, None) == 2
    finally:
        await again.close()
