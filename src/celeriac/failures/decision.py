"""What the worker does with a failed run: retry it after a delay, or give up.

:func:`decide` is total and pure (its only input besides its arguments is ``rng``):

1. a failure marked by ``poisonous()`` → ``GiveUp("poisonous")``;
2. else the policy of the innermost ``retry()`` section it left, else the task's
   policy; ``None`` (``retry=None`` on the task) → ``GiveUp("no retry policy")``;
3. that policy exhausted → ``GiveUp("retries exhausted after N")``;
4. else ``RetryIn(policy.delay(retries_done, rng))``.

``retries_done`` counts every retry of the message so far, whichever policy asked for
them: a section's ``max_retries`` bounds the task's retries as a whole when a failure
leaves that section, not the failures of that section alone.
"""

from __future__ import annotations

import random
from typing import TypeAlias

import msgspec

from celeriac.failures.backoff import Retry
from celeriac.failures.sections import Poisonous, Policy, policy_of

__all__ = ["Decision", "GiveUp", "RetryIn", "decide", "decide_marked"]


class RetryIn(msgspec.Struct, frozen=True):
    """Retry the task after ``seconds``."""

    seconds: float


class GiveUp(msgspec.Struct, frozen=True):
    """The failure is final; ``reason`` says why (for the result and the dead letter)."""

    reason: str

    @property
    def poisonous(self) -> bool:
        """True when a ``poisonous()`` section made the failure final."""
        return self.reason == "poisonous"


#: The worker's answer to a failure.
Decision: TypeAlias = RetryIn | GiveUp


def decide(
    exc: BaseException,
    task_policy: Retry | None,
    retries_done: int,
    rng: random.Random | None = None,
) -> Decision:
    """Retry ``exc``'s task, or give up; ``retries_done`` is how many retries ran already."""
    return decide_marked(policy_of(exc), task_policy, retries_done, rng)


def decide_marked(
    marked: Policy | None,
    task_policy: Retry | None,
    retries_done: int,
    rng: random.Random | None = None,
) -> Decision:
    """:func:`decide` for a failure whose section policy is already known (``marked``:
    what :func:`~celeriac.failures.sections.policy_of` found, e.g. sent back by a box)."""
    if retries_done < 0:
        raise ValueError(f"retries_done must be >= 0, got {retries_done}")
    if isinstance(marked, Poisonous):
        return GiveUp("poisonous")
    policy = marked if marked is not None else task_policy
    if policy is None:
        return GiveUp("no retry policy")
    if policy.exhausted(retries_done):
        return GiveUp(f"retries exhausted after {retries_done}")
    return RetryIn(policy.delay(retries_done, rng))
