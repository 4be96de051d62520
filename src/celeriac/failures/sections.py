"""Sections of a task with their own failure policy: ``poisonous``, ``retry``, ``optional``.

::

    with poisonous():            # a failure here is never retried
        validate(a, b)
    with retry(max_retries=10, interval_start=0, interval_step=5, interval_max=120):
        first_operation()        # a failure here retries the task with this policy
    with optional(ConnectionError, TimeoutError):
        insert_raw_data(raw)     # a failure here is logged as a warning; the task goes on

They are plain ``with`` blocks, the same in ``def`` and ``async def`` code, and keep no
state: they act only on the exception passing through them.

``poisonous()`` and ``retry()`` *mark* an :class:`Exception` leaving them with a policy
(the attribute ``__celeriac_policy__``) and let it propagate unchanged. The innermost
section wins: a section leaves alone an exception an inner section already marked.
Cancellation and other :class:`BaseException` (``KeyboardInterrupt``, ``SystemExit``)
are never marked. The worker reads the mark with :func:`policy_of`.

``optional()`` swallows the exceptions it names (default: any :class:`Exception`),
whatever their mark, and logs a warning on the ``celeriac.task`` logger. It never
swallows a :class:`BaseException`, so cancellation (asyncio's ``CancelledError``,
trio's ``Cancelled``) always goes through; asking it to is a :class:`TypeError`.

**Re-raised exceptions.** :func:`policy_of` follows *explicit* chains: ``raise
New(...) from exc`` keeps ``exc``'s mark. It does not follow the implicit
``__context__`` of an exception raised while another was being handled, because that
handler may have been recovering (``except Invalid: use_fallback()``), and the
fallback's own failure is a new one: it gets the task's policy, or its own section's.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType
from typing import Final, TypeAlias

import msgspec

from celeriac.failures.backoff import Retry

__all__ = [
    "OptionalSection",
    "POLICY_ATTRIBUTE",
    "Poisonous",
    "Policy",
    "PolicySection",
    "optional",
    "poisonous",
    "policy_of",
    "retry",
]

log = logging.getLogger("celeriac.task")

#: The attribute a section sets on an exception leaving it.
POLICY_ATTRIBUTE: Final = "__celeriac_policy__"


class Poisonous(msgspec.Struct, frozen=True, tag="poisonous", tag_field="policy"):
    """The mark of a failure that would surely fail again: never retried."""


#: What a section attaches to an exception; JSON-encodable as a tagged union.
Policy: TypeAlias = Poisonous | Retry


class PolicySection:
    """A ``with`` block that marks an :class:`Exception` leaving it with ``policy``."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy: Policy = policy

    def __repr__(self) -> str:
        return f"PolicySection({self.policy!r})"

    def __enter__(self) -> PolicySection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not hasattr(exc, POLICY_ATTRIBUTE):
            # object.__setattr__: works on exceptions that are frozen dataclasses too.
            object.__setattr__(exc, POLICY_ATTRIBUTE, self.policy)


class OptionalSection:
    """A ``with`` block that logs and swallows the :class:`Exception` types it names."""

    __slots__ = ("exc_types",)

    def __init__(self, exc_types: tuple[type[Exception], ...]) -> None:
        self.exc_types = exc_types

    def __repr__(self) -> str:
        return f"optional({', '.join(t.__qualname__ for t in self.exc_types)})"

    def __enter__(self) -> OptionalSection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # The isinstance(Exception) test is what keeps cancellation out, whatever the types.
        if isinstance(exc, Exception) and isinstance(exc, self.exc_types):
            summary = "".join(traceback.format_exception_only(exc)).strip()
            log.warning("ignored a failure in an optional section: %s", summary)
            return True
        return False


def poisonous() -> PolicySection:
    """A section whose failures are final: the task goes straight to FAILURE, no retries."""
    return PolicySection(Poisonous())


def retry(
    policy: Retry | None = None,
    *,
    max_retries: int | None = None,
    interval_start: float | None = None,
    interval_step: float | None = None,
    interval_max: float | None = None,
    jitter: bool | None = None,
) -> PolicySection:
    """A section whose failures retry the task with their own policy.

    ``retry(max_retries=10, interval_start=0, interval_step=5, interval_max=120)`` is
    the linear form (:meth:`Retry.linear`; the three ``interval_*`` go together);
    ``retry(policy)`` takes any :class:`Retry`; ``retry()`` and ``retry(max_retries=5)``
    use the exponential defaults of ``Retry()``. ``jitter`` defaults to the form's own.
    """
    intervals = (interval_start, interval_step, interval_max)
    if policy is not None:
        if not isinstance(policy, Retry):
            raise TypeError(f"retry() takes a Retry policy, got {policy!r}")
        given = (max_retries, *intervals, jitter)
        if any(value is not None for value in given):
            raise TypeError("retry(): give either a Retry policy or its fields, not both")
        return PolicySection(policy)
    retries = 3 if max_retries is None else max_retries
    if interval_start is None and interval_step is None and interval_max is None:
        return PolicySection(Retry(retries, jitter=True if jitter is None else jitter))
    if interval_start is None or interval_step is None or interval_max is None:
        raise TypeError("retry(): give interval_start, interval_step and interval_max together")
    return PolicySection(
        Retry.linear(
            retries,
            interval_start,
            interval_step,
            interval_max,
            jitter=False if jitter is None else jitter,
        )
    )


def optional(*exc_types: type[Exception]) -> OptionalSection:
    """A section whose failures (of these types; default any Exception) are only logged.

    Passing a type that is not an :class:`Exception` subclass (``BaseException``,
    ``CancelledError``, ``KeyboardInterrupt``) raises :class:`TypeError`: cancellation
    must always reach the code that asked for it.
    """
    for exc_type in exc_types:
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            raise TypeError(
                f"optional() takes Exception subclasses only, got {exc_type!r}; "
                "cancellation and other BaseExceptions are never swallowed"
            )
    return OptionalSection(exc_types or (Exception,))


def policy_of(exc: BaseException) -> Policy | None:
    """The policy of the innermost section a failure left, or None (use the task's).

    Looks at ``exc`` and then down its explicit ``__cause__`` chain (``raise ... from``);
    the first mark found wins. For an exception group without a mark of its own, its
    members are searched: :class:`Poisonous` if any member is, else the first member's
    :class:`Retry`.
    """
    return _search(exc, set())


def _search(exc: BaseException, seen: set[int]) -> Policy | None:
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        mark = getattr(current, POLICY_ATTRIBUTE, None)
        if isinstance(mark, Poisonous | Retry):
            return mark
        if isinstance(current, BaseExceptionGroup):
            found = [_search(member, seen) for member in current.exceptions]
            if any(isinstance(policy, Poisonous) for policy in found):
                return Poisonous()
            for policy in found:
                if policy is not None:
                    return policy
        current = current.__cause__
    return None
