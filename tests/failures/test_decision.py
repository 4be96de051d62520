"""decide(): what the worker does with a failure, for every combination of marks and policies."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.failures import GiveUp, Retry, RetryIn, decide, poisonous, retry

TASK_POLICY = Retry(3, backoff=2, max_backoff=100, jitter=False)
SECTION_POLICY = Retry.linear(10, interval_start=0, interval_step=5, interval_max=120)


def failure_in(section: object | None) -> Exception:
    exc = ValueError("boom")
    try:
        if section is None:
            raise exc
        with section:  # type: ignore[attr-defined]
            raise exc
    except ValueError:
        return exc


def test_a_poisonous_failure_is_final_whatever_the_task_policy() -> None:
    decision = decide(failure_in(poisonous()), TASK_POLICY, 0)
    assert decision == GiveUp("poisonous")
    assert isinstance(decision, GiveUp)
    assert decision.poisonous


def test_an_unmarked_failure_uses_the_task_policy() -> None:
    exc = failure_in(None)
    assert [decide(exc, TASK_POLICY, n) for n in range(4)] == [
        RetryIn(2),
        RetryIn(4),
        RetryIn(8),
        GiveUp("retries exhausted after 3"),
    ]


def test_a_retry_section_overrides_the_task_policy() -> None:
    exc = failure_in(retry(SECTION_POLICY))
    assert decide(exc, TASK_POLICY, 3) == RetryIn(15)
    assert decide(exc, None, 9) == RetryIn(45)
    assert decide(exc, None, 10) == GiveUp("retries exhausted after 10")


def test_no_retry_policy_means_no_retries() -> None:
    decision = decide(failure_in(None), None, 0)
    assert decision == GiveUp("no retry policy")
    assert isinstance(decision, GiveUp)
    assert not decision.poisonous


def test_retries_done_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="retries_done"):
        decide(failure_in(None), TASK_POLICY, -1)


@given(
    section=st.sampled_from(["none", "poisonous", "retry"]),
    task_policy=st.one_of(st.none(), st.builds(Retry, st.integers(0, 5))),
    retries_done=st.integers(0, 12),
    seed=st.integers(),
)
def test_decide_is_total(
    section: str, task_policy: Retry | None, retries_done: int, seed: int
) -> None:
    sections = {"none": None, "poisonous": poisonous(), "retry": retry(SECTION_POLICY)}
    exc = failure_in(sections[section])
    decision = decide(exc, task_policy, retries_done, random.Random(seed))
    policy = SECTION_POLICY if section == "retry" else task_policy
    match decision:
        case RetryIn(seconds):
            assert section != "poisonous"
            assert policy is not None
            assert retries_done < policy.max_retries
            assert 0 <= seconds <= policy.ceiling(retries_done)
        case GiveUp(reason):
            if section == "poisonous":
                assert reason == "poisonous"
            elif policy is None:
                assert reason == "no retry policy"
            else:
                assert reason == f"retries exhausted after {retries_done}"
                assert policy.exhausted(retries_done)
