"""The worker's side of concurrency and rate limits: admit a job, or make it wait here.

Before a job of a limited task runs, :meth:`Gate.admit` takes a slot of its
concurrency limit (a leased semaphore per task and concurrency token, in the app's
coordinator for global limits, in a memory one for per-worker limits) and a unit
of its rate limit (GCRA). A job that is refused waits *in the worker* — held, its
lease kept, the message still the broker's — in a queue per limit key, and only
the head of each queue asks again (after the rate limit's answer, or a short
backoff for a full semaphore), so a thousand waiting jobs do not poll the store a
thousand times. Admitted jobs go back to their executor. Slots are released when
the run ends and renewed while it runs, so a worker that dies gives its slots back
after the limit's ``lease``.

A limit of 0 admits nothing: the task's jobs wait until the limit rises (a range
limit's ``measure`` says so).
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from celeriac.abc import Coordinator
from celeriac.errors import BrokerError
from celeriac.scheduler.limits import Limit

if TYPE_CHECKING:
    from celeriac.worker.job import Job

__all__ = ["Gate"]

log = logging.getLogger("celeriac.worker")

_FULL_WAIT = (0.02, 0.5)  # backoff bounds for a full semaphore (seconds)


class Gate:
    """Admits jobs under their tasks' limits (see the module docstring)."""

    def __init__(
        self,
        worker_name: str,
        local: Coordinator,
        shared: Callable[[], Awaitable[Coordinator]],
        submit: Callable[[Job], None],
    ) -> None:
        self.worker_name = worker_name
        self.local = local
        self._shared = shared
        self.submit = submit
        self._waiting: dict[str, deque[Job]] = {}
        self._held: dict[str, tuple[Coordinator, str, str, float]] = {}  # job id -> slot
        self._measured: dict[str, tuple[float, int]] = {}  # task name -> (when, limit)
        self._tg: anyio.abc.TaskGroup | None = None

    @staticmethod
    def applies(job: Job) -> bool:
        """Does ``job``'s task have a limit?"""
        options = job.task.options
        return options.concurrency is not None or options.rate_limit is not None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the wait queues and renew held slots until cancelled."""
        await self.local.connect()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while True:
                await anyio.sleep(5.0)
                await self._renew()

    def drain(self) -> list[Job]:
        """Every waiting job (shutdown: they go back to the broker)."""
        out = [job for queue in self._waiting.values() for job in queue]
        self._waiting.clear()
        return out

    def waiting(self) -> int:
        """How many jobs wait here for a limit."""
        return sum(len(q) for q in self._waiting.values())

    async def enter(self, job: Job) -> bool:
        """True when ``job`` may run now; False when it waits here (it comes back later)."""
        key = self._key(job)
        queue = self._waiting.get(key)
        if queue:  # others wait for this limit already: take a place in line
            queue.append(job)
            return False
        wait = await self._admit(job)
        if wait is None:
            return True
        queue = self._waiting.get(key)
        if queue is not None:  # another job was refused while this one asked: join its line
            queue.append(job)
            return False
        self._waiting[key] = deque([job])
        assert self._tg is not None, "Gate.run() is not running"
        self._tg.start_soon(self._serve, key, wait)
        return False

    def leave(self, job: Job) -> None:
        """The run of ``job`` ended: give its slot back (in the background)."""
        slot = self._held.pop(job.id, None)
        if slot is not None and self._tg is not None:
            store, key, holder, _ = slot
            self._tg.start_soon(self._release, store, key, holder)

    # -- inside ---------------------------------------------------------------------

    def _key(self, job: Job) -> str:
        limit = job.task.options.concurrency
        token = ""
        if limit is not None and limit.key is not None:
            env = job.envelope
            token = limit.token(env.kwargs, tuple(env.args), _parameters(job.task.fn))
        return f"{job.task.name}#{token}"

    async def _store(self, scope: str) -> Coordinator:
        return self.local if scope == "worker" else await self._shared()

    def _limit_now(self, name: str, limit: Limit) -> int:
        if limit.measure is None:
            return limit.current(None)
        now = time.monotonic()
        cached = self._measured.get(name)
        if cached is not None and now - cached[0] < limit.every:
            return cached[1]
        try:
            value = limit.current(float(limit.measure()))
        except Exception as exc:  # a broken measure: the range's low end, and say so
            log.warning("concurrency measure of %s failed, using its low end: %r", name, exc)
            value = limit.current(None)
        self._measured[name] = (now, value)
        return value

    async def _admit(self, job: Job) -> float | None:
        """None when admitted (slot taken, rate unit counted), else seconds to wait."""
        options = job.task.options
        limit, rate = options.concurrency, options.rate_limit
        holder = f"{self.worker_name}/{job.id}"
        try:
            if limit is not None:
                allowed = self._limit_now(job.task.name, limit)
                if allowed == 0:
                    return limit.every  # stopped: ask again when the limit may have changed
                store = await self._store(limit.scope)
                key = f"limit:{self._key(job)}"
                if not await store.acquire(key, holder, allowed, limit.lease):
                    return _full_wait()
                self._held[job.id] = (store, key, holder, limit.lease)
            if rate is not None:
                store = await self._store(rate.scope)
                # Reserve the next slot up to four intervals (at most 1 s) ahead,
                # then sleep until it: the store's schedule moves on by one interval
                # per run however late this worker wakes, and a worker stalled for
                # less than that (a busy machine) costs no slot.
                ahead = min(4.0 / rate.per_second, 1.0)
                key = f"rate:{job.task.name}"
                wait = await store.throttle(key, rate.per_second, rate.burst, ahead)
                if wait > ahead:
                    self.leave(job)  # the slot goes back while this job waits its turn
                    return wait - ahead
                if wait > 0:
                    await anyio.sleep(wait)  # its slot is reserved: it goes then
        except BrokerError as exc:
            log.warning("limits of %s cannot be checked now, retrying: %s", job.task.name, exc)
            self.leave(job)
            return 1.0
        return None

    async def _serve(self, key: str, wait: float) -> None:
        """Admit the jobs waiting for ``key`` in order, asking only for the head."""
        queue = self._waiting.get(key)
        while queue:
            await anyio.sleep(wait)
            if not queue:  # drained (shutdown) while asleep
                break
            job = queue[0]
            admitted = await self._admit(job)
            if admitted is None:
                queue.popleft()
                job.admitted = True
                self.submit(job)
                wait = 0.0
            else:
                wait = admitted
        if self._waiting.get(key) is queue:
            del self._waiting[key]

    async def _release(self, store: Coordinator, key: str, holder: str) -> None:
        try:
            await store.release(key, holder)
        except BrokerError as exc:  # the lease runs out on its own
            log.warning("could not release %s (its lease will expire): %s", key, exc)

    async def _renew(self) -> None:
        for job_id, (store, key, holder, lease) in list(self._held.items()):
            try:
                await store.acquire(key, holder, 1, lease)  # a holder's renewal always succeeds
            except BrokerError as exc:
                log.warning("could not renew %s for %s: %s", key, job_id, exc)


def _full_wait() -> float:
    low, high = _FULL_WAIT
    return random.uniform(low, high / 4) if random.random() < 0.8 else random.uniform(low, high)


def _parameters(fn: Callable[..., object]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
