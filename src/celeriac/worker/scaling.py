"""The worker's side of autoscaling: its budgets follow the scheduler's recommendation.

Every few seconds :class:`ScaleFollower` reads the recommendation the leading
scheduler publishes in the app's default sink (see
:mod:`celeriac.scheduler.scaling`) and passes its direction to every budget
that can follow one (:meth:`celeriac.worker.budget.Budget.follow`). With no
current recommendation (no scheduler running, or it stopped renewing it) the
budgets run on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio
import anyio.abc

from celeriac.abc import DataSink
from celeriac.errors import BrokerError
from celeriac.scheduler.scaling import read_recommendation
from celeriac.worker.budget import BudgetStrategy

__all__ = ["ScaleFollower"]

log = logging.getLogger("celeriac.worker")


class ScaleFollower:
    """Applies the app's autoscaling recommendation to one worker's budgets."""

    def __init__(
        self,
        app_name: str,
        sink: Callable[[], DataSink],
        budgets: Callable[[], Iterable[BudgetStrategy]],
        interval: float = 2.0,
    ) -> None:
        self.app_name = app_name
        self.sink = sink
        self.budgets = budgets
        self.interval = interval
        self.direction = "hold"

    async def poll(self) -> str:
        """Read the recommendation once and apply it; the direction followed."""
        recommendation = await read_recommendation(self.sink(), self.app_name)
        direction = recommendation.direction if recommendation is not None else "hold"
        if direction != self.direction:
            log.info("worker budgets follow the autoscaler: %s", direction)
        self.direction = direction
        for budget in self.budgets():
            follow = getattr(budget, "follow", None)
            if follow is not None:
                follow(direction)
        return direction

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll until cancelled; a sink that fails is retried next time."""
        task_status.started()
        while True:
            try:
                await self.poll()
            except BrokerError as exc:
                log.warning("cannot read the autoscaling recommendation now: %s", exc)
            await anyio.sleep(self.interval)
