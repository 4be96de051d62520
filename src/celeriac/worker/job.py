"""A job: one delivered command on its way through the worker."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from celeriac.abc import Delivery
from celeriac.messages import Envelope

if TYPE_CHECKING:
    from celeriac.tasks.task import Task
    from celeriac.worker.settle import ResultPublisher

__all__ = ["Job", "RecentIds"]


class Job:
    """A decoded delivery, the task that runs it, its broker's result publisher, and its
    cancel scope once running."""

    __slots__ = ("delivery", "envelope", "released", "revoked", "scope", "settle", "task")

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
