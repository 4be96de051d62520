"""Suspended tasks and their circuit breakers, in one worker.

A suspended task does not run here: its jobs are *parked* — held by the worker,
their leases kept, the messages still the broker's — and queued again when the
suspension ends. Other tasks on the same queue keep flowing. At most
``max_parked`` jobs of one task are held; beyond that a delivery goes back to
the broker, due when the suspension is expected to end, so a long suspension
cannot fill the worker's prefetch with work it will not do.

Circuit breakers (:class:`~celeriac.failures.CircuitBreaker`, per task — or per
service, shared by the tasks naming it — per worker) suspend their tasks when
they trip: after ``failures`` unexpected failures within the window, or when
health checks report states past their thresholds. The suspension lasts until
the breaker half-opens; then one trial run decides: success closes it, failure
trips it again for longer (if it grows).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from celeriac.abc import Coordinator
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.failures.breaker import BreakerState
from celeriac.failures.health import HealthState

if TYPE_CHECKING:
    from celeriac.tasks.task import Task
    from celeriac.worker.job import Job

__all__ = ["Follower", "Suspensions", "set_suspended"]

log = logging.getLogger("celeriac.worker")

_TRIAL_WAIT = 0.1  # seconds a job waits while its breaker's trial run is in progress


class Suspensions:
    """Which tasks are suspended until when, their parked jobs, and their breakers."""

    def __init__(self, max_parked: int = 16) -> None:
        self.max_parked = max_parked
        self._until: dict[str, float] = {}  # task name -> monotonic time (inf: until resumed)
        self._reasons: dict[str, str] = {}
        self._parked: dict[str, deque[Job]] = {}
        self._breakers: dict[str, BreakerState] = {}

    # -- suspension -----------------------------------------------------------------

    def suspend(self, name: str, until: float, reason: str) -> None:
        """Suspend task ``name`` until ``until`` (``time.monotonic()``; inf: until resumed)."""
        self._until[name] = max(until, self._until.get(name, until))
        self._reasons[name] = reason

    def resume(self, name: str) -> None:
        """End the suspension of ``name`` now (its parked jobs go at the next :meth:`due`)."""
        if name in self._until:
            self._until[name] = 0.0

    def suspended(self) -> dict[str, str]:
        """Task name -> why it is suspended, for those that are."""
        now = time.monotonic()
        return {n: self._reasons.get(n, "") for n, until in self._until.items() if until > now}

    def holds(self, job: Job, now: float) -> bool:
        """True when ``job`` must not run now: it was parked, or released to the broker."""
        name = job.envelope.name
        until = self._until.get(name)
        if until is None or until <= now:
            breaker = self.breaker(job.task)
            if breaker is None or breaker.admit(now):
                return False
            reopens = breaker.reopens_at
            until = now + _TRIAL_WAIT if reopens is None or reopens <= now else reopens
            self._until[name] = until
            self._reasons.setdefault(name, "circuit breaker open")
        parked = self._parked.setdefault(name, deque())
        if len(parked) < self.max_parked:
            parked.append(job)
        else:
            delay = 60.0 if math.isinf(until) else max(0.1, until - now)
            job.settle.release(job.delivery, delay)
        return True

    def due(self, now: float, kind: str) -> list[Job]:
        """The parked jobs of ``kind`` whose suspension has ended (to be queued again)."""
        out: list[Job] = []
        for name, until in list(self._until.items()):
            if until > now:
                continue
            parked = self._parked.get(name)
            if parked and parked[0].task.kind != kind:
                continue  # another executor's task: it takes them on its tick
            del self._until[name]
            self._reasons.pop(name, None)
            out.extend(self._parked.pop(name, ()))
        return out

    def drain(self, kind: str) -> list[Job]:
        """Every parked job of ``kind`` (shutdown: they go back to the broker)."""
        out: list[Job] = []
        for name, parked in list(self._parked.items()):
            if parked and parked[0].task.kind == kind:
                out.extend(self._parked.pop(name))
        return out

    # -- breakers -------------------------------------------------------------------

    def breaker(self, task: Task[..., object]) -> BreakerState | None:
        """The breaker state of ``task`` in this worker (None: it has no breaker)."""
        config = task.options.breaker
        if config is None:
            return None
        # Tasks whose breakers guard the same service share one state.
        key = f"service:{config.service}" if config.service else f"task:{task.name}"
        state = self._breakers.get(key)
        if state is None:
            state = self._breakers[key] = config.new_state()
        return state

    def succeeded(self, job: Job) -> None:
        """Report a run that succeeded."""
        breaker = self.breaker(job.task)
        if breaker is not None:
            breaker.record_success(time.monotonic())

    def failed(self, job: Job) -> None:
        """Report an unexpected failure; a breaker that trips suspends the task."""
        breaker = self.breaker(job.task)
        now = time.monotonic()
        if breaker is not None and breaker.record_failure(now):
            self._tripped(job.task.name, breaker, now, "unexpected failures")

    def released(self, job: Job) -> None:
        """Report a run that ended with no verdict (revoked, shutdown)."""
        breaker = self.breaker(job.task)
        if breaker is not None:
            breaker.release(time.monotonic())

    def health(self, tasks: list[Task[..., object]], check: str, state: HealthState) -> None:
        """A health check reported ``state``: tell the breakers of the tasks that use it."""
        now = time.monotonic()
        for task in tasks:
            config = task.options.breaker
            if config is None or not any(c.name == check for c in config.health_checks):
                continue
            breaker = self.breaker(task)
            if breaker is not None and breaker.record_health(state, now):
                self._tripped(task.name, breaker, now, f"health check {check}: {state.name}")

    def _tripped(self, name: str, breaker: BreakerState, now: float, why: str) -> None:
        until = breaker.reopens_at or now
        level = logging.ERROR if breaker.log_level(now) == "error" else logging.WARNING
        log.log(
            level,
            "circuit breaker of %s tripped (%s, trip %d): suspended for %.1fs",
            name,
            why,
            breaker.trips,
            until - now,
        )
        self.suspend(name, until, f"circuit breaker open ({why})")


SUSPENDED = "suspended:"  # coordinator counters: > 0 while a task is suspended by hand
VERSION = "suspended:~version"  # bumped on every change, so workers poll one key


async def set_suspended(coordinator: Coordinator, name: str, suspended: bool) -> None:
    """Record that task ``name`` is (or is no longer) suspended by hand, for every worker."""
    key = SUSPENDED + name
    current = await coordinator.add(key, 0, None)
    if suspended and current <= 0:
        await coordinator.add(key, 1 - current, None)
    elif not suspended and current != 0:
        await coordinator.add(key, -current, None)
    await coordinator.add(VERSION, 1, None)


class Follower:
    """Applies the suspensions recorded in the coordinator (``app.suspend``) to one worker.

    It polls one version counter every ``interval`` seconds and reads the task flags
    only when it changed, so a worker costs the store one read a second however
    many tasks it has.
    """

    def __init__(
        self,
        suspensions: Suspensions,
        names: Callable[[], list[str]],
        coordinator: Callable[[], Awaitable[Coordinator]],
        interval: float = 1.0,
    ) -> None:
        self.suspensions = suspensions
        self.names = names
        self.coordinator = coordinator
        self.interval = interval
        self._version: int | None = None
        self._held: set[str] = set()

    async def poll(self) -> None:
        """Read the flags (if they changed) and suspend or resume tasks here."""
        store = await self.coordinator()
        version = await store.add(VERSION, 0, None)
        if version == self._version:
            return
        for name in self.names():
            suspended = await store.add(SUSPENDED + name, 0, None) > 0
            if suspended and name not in self._held:
                self._held.add(name)
                self.suspensions.suspend(name, math.inf, "suspended (app.suspend)")
                log.warning("task %s suspended: its messages wait until it is resumed", name)
            elif not suspended and name in self._held:
                self._held.discard(name)
                self.suspensions.resume(name)
                log.warning("task %s resumed", name)
        self._version = version

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll until cancelled; a store that fails is retried (and logged) next time."""
        task_status.started()
        while True:
            try:
                await self.poll()
            except BrokerError as exc:
                log.warning("cannot read suspended tasks now: %s", exc)
            except ConfigurationError as exc:  # no coordinator for this app: nothing to follow
                log.info("app.suspend()/resume() do not reach this worker: %s", exc)
                await anyio.sleep_forever()
            await anyio.sleep(self.interval)
