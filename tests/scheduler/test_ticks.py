"""The arithmetic of periodic ticks: cron in time zones (DST included) and fixed periods.

No I/O and no sleeping: schedules are pure functions of an instant. The cron
ticks are checked against an oracle that reads the rule off the wall clock one
UTC minute at a time (``croniter.match`` on each minute, not croniter's iterator).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from celeriac.errors import ConfigurationError
from celeriac.scheduler.periodic import (
    EPOCH,
    Cron,
    Every,
    schedule_of,
    tick_id,
    ticks_between,
    to_micros,
)

MINUTE = timedelta(minutes=1)
ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",  # DST of 30 minutes
    "America/Santiago",  # southern hemisphere, transitions at midnight
    "Europe/Dublin",  # "negative" DST in the tz database
    "Asia/Kolkata",  # +05:30, no DST
    "Pacific/Apia",  # skipped 30 December 2011 entirely
]
EXPRESSIONS = [
    "*/5 * * * *",
    "30 2 * * *",
    "0 * * * *",
    "15,45 1-3 * * *",
    "*/20 2 * * *",
    "0 0 * * *",
    "59 23 * * 0",
    "7 */3 * * *",
]


def wall(u: datetime, zone: ZoneInfo) -> datetime:
    return u.astimezone(zone).replace(tzinfo=None, fold=0)


def fires(expression: str, zone: ZoneInfo, u: datetime) -> bool:
    """The stated rule, read at the UTC minute ``u`` (the oracle).

    A wall time that matches fires at its first occurrence; wall times skipped by
    a gap fire once at the instant the gap ends.
    """
    local = u.astimezone(zone)
    if local.fold == 1:  # the second pass of a repeated hour: it fired in the first
        return False
    now, before = wall(u, zone), wall(u - timedelta(microseconds=1), zone)
    if croniter.match(expression, now):
        return True
    skipped = before.replace(second=0, microsecond=0) + MINUTE
    while skipped < now:  # a gap ends at u: the wall times it skipped
        if croniter.match(expression, skipped):
            return True
        skipped += MINUTE
    return False


def minutes(a: datetime, b: datetime) -> Iterator[datetime]:
    """Every UTC minute in (a, b] (``a`` on a minute)."""
    u = a + MINUTE
    while u <= b:
        yield u
        u += MINUTE


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants in ``year`` at which ``zone``'s UTC offset changes (to the minute)."""
    found = []
    u = datetime(year, 1, 1, tzinfo=UTC)
    while u.year == year:
        step = u + timedelta(hours=1)
        if u.astimezone(zone).utcoffset() != step.astimezone(zone).utcoffset():
            low, high = u, step
            while high - low > MINUTE:
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        u = step
    return found


def assert_matches_the_rule(cron: Cron, a: datetime, b: datetime) -> None:
    assert isinstance(cron.tz, ZoneInfo)
    ticks = list(ticks_between(cron, a, b))
    assert all(x < y for x, y in itertools.pairwise(ticks)), "strictly increasing"
    assert all(a < t <= b for t in ticks)
    expected = [u for u in minutes(a, b) if fires(cron.expression, cron.tz, u)]
    assert ticks == expected, f"{cron} between {a} and {b}"


# -- cron against the oracle -------------------------------------------------------------

starts = st.builds(
    datetime,
    year=st.integers(1995, 2035),
    month=st.sampled_from([3, 4, 9, 10, 11]),  # where the DST transitions are
    day=st.integers(1, 28),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    tzinfo=st.just(UTC),
)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(EXPRESSIONS),
    starts,
    st.integers(1, 24 * 60),
)
def test_cron_ticks_are_exactly_the_minutes_the_rule_fires_on(
    zone: str, expression: str, start: datetime, length: int
) -> None:
    assert_matches_the_rule(Cron(expression, ZoneInfo(zone)), start, start + length * MINUTE)


@pytest.mark.parametrize("zone", [z for z in ZONES if z not in ("UTC", "Asia/Kolkata")])
def test_cron_ticks_follow_the_rule_across_every_transition_of_a_year(zone: str) -> None:
    tz = ZoneInfo(zone)
    found = transitions(tz, 2011 if zone == "Pacific/Apia" else 2025)
    assert found, f"{zone} has DST transitions"
    for at in found:
        for expression in EXPRESSIONS:
            assert_matches_the_rule(
                Cron(expression, tz), at - 4 * 60 * MINUTE, at + 4 * 60 * MINUTE
            )


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ZONES), st.sampled_from(EXPRESSIONS), starts, st.integers(0, 10**9))
def test_last_at_or_before_and_next_after_leave_no_tick_between_them(
    zone: str, expression: str, start: datetime, micros: int
) -> None:
    cron = Cron(expression, ZoneInfo(zone))
    t = start + timedelta(microseconds=micros)
    last, following = cron.last_at_or_before(t), cron.next_after(t)
    assert last is not None
    assert last <= t < following
    assert cron.next_after(last) == following  # nothing in (last, t], nothing in (t, following)
    assert cron.last_at_or_before(following) == following


# -- DST, one case at a time -------------------------------------------------------------

PARIS, NEW_YORK = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")


def day_ticks(cron: Cron, day: datetime) -> list[datetime]:
    return list(ticks_between(cron, day - timedelta(hours=12), day + timedelta(hours=36)))


def test_a_daily_job_at_a_time_that_does_not_exist_runs_at_the_end_of_the_gap() -> None:
    # 2025-03-30 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    ticks = day_ticks(Cron("30 2 * * *", PARIS), datetime(2025, 3, 30, tzinfo=UTC))
    assert ticks == [
        datetime(2025, 3, 30, 1, 0, tzinfo=UTC),  # 03:00 CEST, the end of the gap
        datetime(2025, 3, 31, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]
    ny = day_ticks(Cron("30 2 * * *", NEW_YORK), datetime(2025, 3, 9, tzinfo=UTC))
    assert ny[0] == datetime(2025, 3, 9, 7, 0, tzinfo=UTC)  # 03:00 EDT


def test_a_daily_job_at_a_time_that_happens_twice_runs_once_at_the_first() -> None:
    # 2025-10-26 in Paris: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    ticks = day_ticks(Cron("30 2 * * *", PARIS), datetime(2025, 10, 26, tzinfo=UTC))
    assert ticks == [
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC),  # 02:30 CEST, the first
        datetime(2025, 10, 27, 1, 30, tzinfo=UTC),  # 02:30 CET, the next day
    ]


def test_ticks_inside_a_gap_collapse_into_one_at_its_end() -> None:
    cron = Cron("*/20 * * * *", PARIS)
    a = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)  # 01:30 CET
    local = [
        t.astimezone(PARIS).strftime("%H:%M") for t in ticks_between(cron, a, a + 2 * 60 * MINUTE)
    ]
    assert local == ["01:40", "03:00", "03:20", "03:40", "04:00", "04:20"]


def test_a_day_that_does_not_exist_still_runs_its_daily_job_once() -> None:
    apia = ZoneInfo(
        "Pacific/Apia"
    )  # 2011-12-29 23:59:59 -10:00 was followed by 2011-12-31 00:00 +14:00
    ticks = day_ticks(Cron("0 12 * * *", apia), datetime(2011, 12, 30, tzinfo=UTC))
    assert [t.astimezone(apia).strftime("%d %H:%M") for t in ticks] == [
        "29 12:00",
        "31 00:00",
        "31 12:00",
    ]


def test_a_thirty_minute_dst_shift_is_handled_like_an_hour() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 2025-10-05: 02:00 becomes 02:30
    ticks = day_ticks(Cron("15 2 * * *", lord_howe), datetime(2025, 10, 5, tzinfo=UTC))
    assert [t.astimezone(lord_howe).strftime("%d %H:%M") for t in ticks] == ["05 02:30", "06 02:15"]


# -- every: fixed periods ----------------------------------------------------------------

periods = st.integers(1, 10**11).map(lambda us: timedelta(microseconds=us))
instants = st.integers(0, 4 * 10**15).map(lambda us: EPOCH + timedelta(microseconds=us))


@given(periods, instants, st.integers(0, 10**10))
def test_every_ticks_on_whole_multiples_of_the_period_with_none_skipped(
    period: timedelta, a: datetime, span: int
) -> None:
    every = Every(period)
    b = a + timedelta(microseconds=span)
    step = period // timedelta(microseconds=1)
    first = every.next_after(a)
    assert a < first <= a + period
    assert to_micros(first) % step == 0
    count = to_micros(b) // step - to_micros(a) // step
    ticks = list(ticks_between(every, a, b)) if count < 1000 else []
    if ticks or count == 0:
        assert len(ticks) == count
        assert all(y - x == period for x, y in itertools.pairwise(ticks))
    last = every.last_at_or_before(b)
    assert last is not None
    assert last <= b < last + period


@given(periods, instants, st.integers(1, 10**7))
def test_every_does_not_drift_over_many_ticks(period: timedelta, a: datetime, n: int) -> None:
    assume(n * period < datetime.max.replace(tzinfo=UTC) - a - 2 * period)  # stay in range
    every = Every(period)
    first = every.next_after(a)
    nth = every.next_after(first + (n - 1) * period - timedelta(microseconds=1))
    assert nth == first + (n - 1) * period  # exact, however many ticks lie between


def test_every_in_seconds_ticks_at_the_same_instants_for_everyone() -> None:
    every = schedule_of(every=30)
    t = datetime(2025, 1, 1, 12, 0, 7, 123456, tzinfo=UTC)
    assert every.next_after(t) == datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert schedule_of(every=0.1).next_after(t) == datetime(
        2025, 1, 1, 12, 0, 7, 200000, tzinfo=UTC
    )


def test_a_tick_has_one_message_id_for_every_scheduler() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    assert tick_id("shop", "shop.cleanup", t) == tick_id(
        "shop", "shop.cleanup", t.astimezone(PARIS)
    )
    assert len({tick_id("shop", "shop.cleanup", t + n * MINUTE) for n in range(100)}) == 100
    assert tick_id("shop", "a", t) != tick_id("shop", "b", t) != tick_id("other", "b", t)
    assert len(tick_id("shop", "a", t)) == 32


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"cron": "* * * *"}, "bad cron"),
        ({"cron": "* * * * * *"}, "6 fields"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "H * * * *"}, "bad cron"),
        ({"cron": 5}, "must be a string"),
        ({"cron": "* * * * *", "every": 5}, "not both"),
        ({}, "either cron= or every="),
        ({"every": 0}, "more than 0"),
        ({"every": -1.5}, "more than 0"),
        ({"every": float("nan")}, "more than 0"),
        ({"every": timedelta(0)}, "more than 0"),
        ({"every": "5"}, "timedelta or seconds"),
        ({"every": True}, "timedelta or seconds"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"every": 5, "tz": "Europe/Paris"}, "tz= applies to cron"),
    ],
)
def test_a_bad_schedule_is_refused_when_declared(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        schedule_of(**options)  # type: ignore[arg-type]
