"""Sections: poisonous() and retry() mark failures, optional() swallows them, never cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import anyio
import anyio.lowlevel
import pytest
import trio

from celeriac.failures import (
    POLICY_ATTRIBUTE,
    Poisonous,
    Retry,
    optional,
    poisonous,
    policy_of,
    retry,
)

SECTION_POLICY = Retry.linear(10, interval_start=0, interval_step=5, interval_max=120)


class Invalid(Exception):
    pass


class Transient(Exception):
    pass


def fail(exc: BaseException) -> None:
    raise exc


def test_poisonous_marks_the_failure_and_reraises_it_unchanged() -> None:
    original = Invalid("bad input")
    with pytest.raises(Invalid) as caught, poisonous():
        fail(original)
    assert caught.value is original
    assert policy_of(original) == Poisonous()


def test_retry_section_marks_the_failure_with_its_policy() -> None:
    section = retry(max_retries=10, interval_start=0, interval_step=5, interval_max=120)
    with pytest.raises(Transient) as caught, section:
        fail(Transient())
    assert policy_of(caught.value) == SECTION_POLICY


def test_a_section_that_does_not_fail_changes_nothing() -> None:
    done = []
    with poisonous(), retry(), optional():
        done.append("body")
    done.append("after")
    assert done == ["body", "after"]


def test_an_unmarked_failure_has_no_policy() -> None:
    assert policy_of(Transient()) is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (lambda: retry(), Retry()),
        (lambda: retry(max_retries=5), Retry(5)),
        (lambda: retry(Retry(7, 0.5, 10)), Retry(7, 0.5, 10)),
        (lambda: retry(max_retries=2, interval_start=1, interval_step=2, interval_max=3),
         Retry.linear(2, 1, 2, 3)),
        (lambda: retry(interval_start=1, interval_step=2, interval_max=3, jitter=True),
         Retry.linear(3, 1, 2, 3, jitter=True)),
    ],
)  # fmt: skip
def test_the_forms_of_retry(section: object, expected: Retry) -> None:
    assert section().policy == expected  # type: ignore[operator]


def test_retry_refuses_half_a_policy() -> None:
    with pytest.raises(TypeError, match="together"):
        retry(interval_step=5)
    with pytest.raises(TypeError, match="not both"):
        retry(Retry(), max_retries=3)
    with pytest.raises(TypeError, match="takes a Retry"):
        retry({"max_retries": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_max"):
        retry(interval_start=10, interval_step=1, interval_max=5)


def test_the_innermost_section_wins() -> None:
    with pytest.raises(Invalid) as inner_poison, retry(SECTION_POLICY), poisonous():
        fail(Invalid())
    assert policy_of(inner_poison.value) == Poisonous()

    with pytest.raises(Transient) as inner_retry, poisonous(), retry(SECTION_POLICY):
        fail(Transient())
    assert policy_of(inner_retry.value) == SECTION_POLICY


def test_optional_inside_poisonous_lets_the_task_go_on(caplog: pytest.LogCaptureFixture) -> None:
    done = []
    with poisonous():
        with optional():
            fail(Transient("bi store down"))
        done.append("after optional")
    assert done == ["after optional"]
    assert "Transient: bi store down" in caplog.text


def test_optional_swallows_even_a_poisonous_failure() -> None:
    with optional(Invalid), poisonous():
        fail(Invalid())


def test_optional_logs_a_warning_on_the_task_logger(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="celeriac.task"),
        optional(ConnectionError, TimeoutError),
    ):
        fail(ConnectionRefusedError("payments:443 refused"))
    [record] = caplog.records
    assert (record.name, record.levelno) == ("celeriac.task", logging.WARNING)
    assert "ConnectionRefusedError: payments:443 refused" in record.getMessage()


def test_optional_lets_other_types_through(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyError), optional(ConnectionError):
        fail(KeyError("x"))
    assert caplog.records == []


def test_optional_never_swallows_base_exceptions() -> None:
    with pytest.raises(KeyboardInterrupt), optional():
        fail(KeyboardInterrupt())
    with pytest.raises(asyncio.CancelledError), optional():
        fail(asyncio.CancelledError())


@pytest.mark.parametrize(
    "exc_type", [BaseException, KeyboardInterrupt, asyncio.CancelledError, trio.Cancelled, 42]
)
def test_optional_refuses_to_be_asked_for_base_exceptions(exc_type: object) -> None:
    with pytest.raises(TypeError, match="Exception subclasses only"):
        optional(exc_type)  # type: ignore[arg-type]


def test_sections_leave_base_exceptions_unmarked() -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt), poisonous():
        fail(interrupt)
    assert not hasattr(interrupt, POLICY_ATTRIBUTE)


def test_a_frozen_dataclass_exception_is_marked_too() -> None:
    @dataclasses.dataclass(frozen=True)
    class Frozen(Exception):
        code: int

    with pytest.raises(Frozen) as caught, poisonous():
        fail(Frozen(3))
    assert policy_of(caught.value) == Poisonous()


def test_raise_from_keeps_the_mark() -> None:
    def validate_and_translate() -> None:
        try:
            with poisonous():
                fail(Invalid())
        except Invalid as exc:
            raise RuntimeError("wrapped") from exc

    with pytest.raises(RuntimeError) as caught:
        validate_and_translate()
    assert policy_of(caught.value) == Poisonous()


def test_a_failure_while_handling_a_marked_one_is_a_new_failure() -> None:
    def validate_or_fall_back() -> None:
        try:
            with poisonous():
                fail(Invalid())
        except Invalid:
            fail(Transient("the fallback failed too"))

    with pytest.raises(Transient) as caught:
        validate_or_fall_back()
    assert isinstance(caught.value.__context__, Invalid)
    assert policy_of(caught.value) is None


def test_raise_from_none_cuts_the_chain() -> None:
    def hide_the_cause() -> None:
        try:
            with retry(SECTION_POLICY):
                fail(Transient())
        except Transient:
            raise RuntimeError("hidden") from None

    with pytest.raises(RuntimeError) as caught:
        hide_the_cause()
    assert policy_of(caught.value) is None


def test_a_cyclic_cause_chain_ends() -> None:
    first, second = Transient(), Transient()
    first.__cause__, second.__cause__ = second, first
    assert policy_of(first) is None


def test_exception_groups_search_their_members() -> None:
    marked_retry, marked_poison = Transient(), Invalid()
    with pytest.raises(Transient), retry(SECTION_POLICY):
        fail(marked_retry)
    with pytest.raises(Invalid), poisonous():
        fail(marked_poison)
    assert policy_of(ExceptionGroup("g", [ValueError(), marked_retry])) == SECTION_POLICY
    assert policy_of(ExceptionGroup("g", [marked_retry, marked_poison])) == Poisonous()
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [marked_poison])])
    assert policy_of(nested) == Poisonous()
    assert policy_of(ExceptionGroup("g", [ValueError()])) is None
    with pytest.raises(ExceptionGroup) as caught, retry(Retry(1)):
        raise ExceptionGroup("g", [marked_poison])
    assert policy_of(caught.value) == Retry(1)  # the group's own mark comes first


class TestInAsyncCode:
    pytestmark = pytest.mark.anyio

    async def test_sections_work_around_awaits(self) -> None:
        async def body() -> None:
            with retry(SECTION_POLICY):
                await anyio.lowlevel.checkpoint()
                with poisonous():
                    await anyio.lowlevel.checkpoint()
                    fail(Invalid())

        with pytest.raises(Invalid) as caught:
            await body()
        assert policy_of(caught.value) == Poisonous()
        with optional(Transient):
            await anyio.lowlevel.checkpoint()
            fail(Transient())

    async def test_optional_never_swallows_cancellation(self) -> None:
        reached = []
        with anyio.CancelScope() as scope:
            with optional():
                scope.cancel()
                await anyio.sleep(5)
            reached.append("after optional")  # only if optional() swallowed the cancellation
        assert scope.cancelled_caught
        assert reached == []

    async def test_optional_lets_a_task_group_cancel_its_children(self) -> None:
        reached = []

        async def child() -> None:
            with optional():
                await anyio.sleep(5)
            reached.append("after optional")

        async def family() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
                await anyio.lowlevel.checkpoint()
                fail(Transient("sibling failed"))

        with pytest.raises(ExceptionGroup) as caught:
            await family()
        assert caught.group_contains(Transient)
        assert reached == []

    async def test_cancellation_is_never_marked(self) -> None:
        seen: list[BaseException] = []
        with anyio.CancelScope() as scope:
            try:
                with poisonous(), retry():
                    scope.cancel()
                    await anyio.sleep(5)
            except BaseException as exc:
                seen.append(exc)
                raise
        assert scope.cancelled_caught
        [cancelled] = seen
        assert isinstance(cancelled, anyio.get_cancelled_exc_class())
        assert not hasattr(cancelled, POLICY_ATTRIBUTE)
