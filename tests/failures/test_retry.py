"""Retry policies: the delay arithmetic, the bound, validation and the JSON form."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.failures import Poisonous, Policy, Retry

seconds = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
indexes = st.integers(0, 5000)


@st.composite
def exponential(draw: st.DrawFn, jitter: bool | None = None) -> Retry:
    backoff = draw(seconds)
    max_backoff = draw(st.floats(backoff, 2e6, allow_nan=False))
    return Retry(
        draw(st.integers(0, 50)),
        backoff,
        max_backoff,
        draw(st.booleans()) if jitter is None else jitter,
    )


@st.composite
def linear(draw: st.DrawFn, jitter: bool | None = None) -> Retry:
    start = draw(seconds)
    return Retry.linear(
        draw(st.integers(0, 50)),
        start,
        draw(seconds),
        draw(st.floats(start, 2e6, allow_nan=False)),
        jitter=draw(st.booleans()) if jitter is None else jitter,
    )


policies = st.one_of(exponential(), linear())


@given(policy=policies, index=indexes, seed=st.integers())
def test_every_delay_is_between_zero_and_the_cap(policy: Retry, index: int, seed: int) -> None:
    delay = policy.delay(index, random.Random(seed))
    assert 0 <= delay <= policy.cap
    assert delay <= policy.ceiling(index)


@given(policy=st.one_of(exponential(jitter=False), linear(jitter=False)), index=indexes)
def test_without_jitter_delays_never_decrease(policy: Retry, index: int) -> None:
    assert policy.delay(index, None) == policy.ceiling(index)
    assert policy.delay(index) <= policy.delay(index + 1)


@given(policy=exponential(), index=st.integers(0, 60))
def test_exponential_ceiling_doubles_up_to_max_backoff(policy: Retry, index: int) -> None:
    assert policy.ceiling(index) == min(policy.max_backoff, policy.backoff * 2**index)


@given(policy=linear(), index=st.integers(0, 10_000))
def test_linear_ceiling_steps_up_to_interval_max(policy: Retry, index: int) -> None:
    expected = min(policy.interval_max, policy.interval_start + policy.interval_step * index)
    assert policy.ceiling(index) == expected


@given(policy=st.one_of(exponential(jitter=True), linear(jitter=True)), index=indexes)
def test_jittered_delay_stays_within_its_ceiling(policy: Retry, index: int) -> None:
    rng = random.Random(index)
    for _ in range(5):
        assert 0 <= policy.delay(index, rng) <= policy.ceiling(index)


@given(policy=policies, retries_done=st.integers(0, 200))
def test_exhausted_exactly_after_max_retries(policy: Retry, retries_done: int) -> None:
    assert policy.exhausted(retries_done) is (retries_done >= policy.max_retries)


@given(policy=policies)
def test_json_round_trip(policy: Retry) -> None:
    data = msgspec.json.encode(policy)
    assert msgspec.json.decode(data, type=Retry) == policy
    assert msgspec.json.decode(data, type=Policy) == policy


def test_the_defaults() -> None:
    policy = Retry()
    assert (policy.max_retries, policy.backoff, policy.max_backoff, policy.jitter) == (
        3,
        1.0,
        60.0,
        True,
    )
    assert [policy.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.exhausted(2) is False
    assert policy.exhausted(3) is True


def test_the_sections_linear_example() -> None:
    policy = Retry.linear(10, interval_start=0, interval_step=5, interval_max=120)
    assert policy.jitter is False
    assert [policy.delay(n) for n in (0, 1, 2, 24, 25, 1000)] == [0, 5, 10, 120, 120, 120]


def test_full_jitter_spreads_over_the_whole_range() -> None:
    # Equal jitter would never go below half the ceiling; full jitter does.
    policy = Retry(backoff=10, max_backoff=10)
    rng = random.Random(1)
    delays = [policy.delay(0, rng) for _ in range(200)]
    assert min(delays) < 2.5
    assert max(delays) > 7.5
    assert policy.delay(0, random.Random(7)) == policy.delay(0, random.Random(7))


def test_huge_retry_indexes_stay_at_the_cap() -> None:
    assert Retry(backoff=1e-300, max_backoff=5).ceiling(10**9) == 5
    assert Retry(backoff=0, max_backoff=5).ceiling(10**9) == 0
    assert Retry.linear(3, 0, 1, 9).ceiling(10**400) == 9


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Retry(max_retries=-1), "max_retries must be >= 0"),
        (lambda: Retry(max_retries=1.5), "max_retries must be an int"),  # type: ignore[arg-type]
        (lambda: Retry(max_retries=True), "max_retries must be an int"),
        (lambda: Retry(backoff=-1), "backoff must be a finite number >= 0"),
        (lambda: Retry(backoff=math.nan), "backoff must be a finite number"),
        (lambda: Retry(max_backoff=math.inf), "max_backoff must be a finite number"),
        (lambda: Retry(backoff=10, max_backoff=5), r"max_backoff \(5\) must be >= backoff"),
        (lambda: Retry(jitter=1), "jitter must be a bool"),  # type: ignore[arg-type]
        (lambda: Retry(interval_step=5), "use Retry.linear"),
        (lambda: Retry(kind="cubic"), "kind must be"),  # type: ignore[arg-type]
        (lambda: Retry.linear(3, 10, 1, 5), r"interval_max \(5\) must be >= interval_start"),
        (lambda: Retry.linear(3, 0, -1, 5), "interval_step must be a finite number >= 0"),
        (lambda: Retry(3, 2.0, kind="linear"), "belong to the exponential form"),
    ],
)
def test_invalid_policies_are_refused(make: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make()  # type: ignore[operator]


def test_decoding_validates_too() -> None:
    with pytest.raises(msgspec.ValidationError, match="max_backoff"):
        msgspec.json.decode(b'{"policy":"retry","backoff":9,"max_backoff":1}', type=Retry)


def test_a_negative_retry_index_is_an_error() -> None:
    with pytest.raises(ValueError, match="retry_index"):
        Retry().delay(-1)
    with pytest.raises(ValueError, match="retries_done"):
        Retry().exhausted(-1)


def test_policies_of_both_kinds_decode_from_one_union() -> None:
    encoded = msgspec.json.encode([Poisonous(), Retry.linear(2, 0, 1, 3), None])
    assert msgspec.json.decode(encoded, type=list[Policy | None]) == [
        Poisonous(),
        Retry.linear(2, 0, 1, 3),
        None,
    ]
