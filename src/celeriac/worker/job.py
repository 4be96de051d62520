"""A job: one delivered command on its way through the worker."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from celeriac.abc import Delivery
from celeriac.messages import Envelope
from celeriac.router.router import step_of

if TYPE_CHECKING:
    from celeriac.tasks.task import Task
    from celeriac.worker.settle import ResultPublisher

__all__ = ["Job", "RecentIds"]


class Job:
    """A decoded delivery, the task that runs it, its broker's result publisher, and its
    cancel scope once running."""

    __slots__ = (
        "admitted",
        "dedupe_id",
        "delivery",
        "envelope",
        "released",
        "revoked",
        "scope",
        "settle",
        "step",
        "task",
    )

    def __init__(
        self,
        delivery: Delivery,
        envelope: Envelope,
        task: Task[..., object],
        settle: ResultPublisher,
    ) -> None:
        self.delivery = delivery
        self.envelope = envelope
        self.task = task
        self.settle = settle  # the result publisher of the broker this came from
        self.scope: anyio.CancelScope | None = None
        self.revoked = False
        self.released = False
        self.dedupe_id: str | None = None  # the dedupe claim this job holds, if any
        self.admitted = False  # its limits' gate let it through (see worker/gate.py)
        self.step = step_of(envelope)  # (workflow, step) for a step of a running canvas

    @property
    def id(self) -> str:
        """The message id."""
        return self.envelope.id


class RecentIds:
    """The idempotent receiver's memory: the ids of the last ``size`` messages processed."""

    def __init__(self, size: int = 100) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, id: object) -> bool:
        return id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, id: str) -> None:
        """Remember ``id``, forgetting the oldest beyond ``size``."""
        ids = self._ids
        ids[id] = None
        if len(ids) > self.size:
            ids.popitem(last=False)
