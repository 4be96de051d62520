"""Task execution (CEP "Task Execution"): one executor per task kind.

An executor owns its kind's internal task queue and a set of *runners*: for
coroutine tasks, coroutines that await the task on the worker's loop; for
thread tasks, coroutines that each drive one thread at a time; for boxed
tasks, coroutines that each drive one box process. The number of runners is the
kind's concurrency budget (:mod:`celeriac.worker.budget`), re-evaluated every
tick from the queue's backlog.

Runners turn a job into a result document and hand it to the result publisher.
On shutdown, queued jobs go back to the broker at once; running ones get a grace
period, then are cancelled and go back to the broker too: nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

from celeriac._notify import Notifier
from celeriac.abc import StoredDocument
from celeriac.messages import Codec, Envelope
from celeriac.tasks.outcome import (
    FAILURE,
    REVOKED,
    STARTED,
    SUCCESS,
    ErrorInfo,
    Outcome,
    document_for,
    error_info,
)
from celeriac.worker.boxchild import BoxRequest
from celeriac.worker.boxes import BoxPool
from celeriac.worker.budget import BudgetStrategy
from celeriac.worker.job import Job
from celeriac.worker.jobqueue import JobQueue

if TYPE_CHECKING:
    from celeriac.tasks.task import Kind

__all__ = ["Executor", "TimeLimitExceeded", "encode_outcome"]

log = logging.getLogger("celeriac.worker")


class TimeLimitExceeded(Exception):
    """The task ran past its time limit and was stopped."""


def encode_outcome(codec: Codec, job: Job, outcome: Outcome) -> StoredDocument:
    """The stored form of ``outcome``; an unserializable value becomes a FAILURE."""
    try:
        body = codec.encode(document_for(job.envelope, outcome))
    except (TypeError, ValueError, OverflowError) as exc:
        failure = Outcome(
            state=FAILURE,
            error=error_info(
                TypeError(f"result of {job.envelope.name} is not serializable: {exc}")
            ),
            worker=outcome.worker,
        )
        body = codec.encode(document_for(job.envelope, failure))
        return StoredDocument(id=job.id, state=FAILURE, body=body)
    return StoredDocument(id=job.id, state=outcome.state, body=body)


class Executor:
    """Runs the jobs of one kind within its concurrency budget."""

    def __init__(
        self,
        kind: Kind,
        budget: BudgetStrategy,
        codec: Codec,
        *,
        worker_name: str,
        is_revoked: Callable[[str], bool],
        track_started: bool = True,
        tick: float = 0.01,
    ) -> None:
        self.kind = kind
        self.budget = budget
        self.codec = codec
        self.worker_name = worker_name
        self.is_revoked = is_revoked
        self.track_started = track_started
        self.tick = tick
        self.queue: JobQueue[Job] = JobQueue()
        self.running: dict[str, Job] = {}
        self.processed = 0
        self.failed = 0
        self._runners = 0
        self._min_queued = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopping = False
        self._grace_scope: anyio.CancelScope | None = None
        self._idle = Notifier()
        self._limiter = anyio.CapacityLimiter(max(1, budget.limit))
        self._boxes = BoxPool(max(1, budget.limit)) if kind == "process" else None
        self._run_job: Callable[[Job], Awaitable[Any]] = {
            "coroutine": self._run_coroutine,
            "thread": self._run_thread,
            "process": self._run_boxed,
        }[kind]

    def submit(self, job: Job) -> None:
        """Queue ``job`` (priority ordered)."""
        self.queue.put(job, job.envelope.priority)

    def cancel(self, id: str) -> bool:
        """Cancel the running job ``id`` (revocation); True if it was running here."""
        job = self.running.get(id)
        if job is None:
            return False
        job.revoked = True
        if job.scope is not None:
            job.scope.cancel()
        return True

    # -- running a job ---------------------------------------------------------

    async def _run_coroutine(self, job: Job) -> Any:
        env = job.envelope
        return await job.task.fn(*env.args, **env.kwargs)

    async def _run_thread(self, job: Job) -> Any:
        env = job.envelope
        call = functools.partial(job.task.fn, *env.args, **env.kwargs)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)

    async def _run_boxed(self, job: Job) -> Any:
        assert self._boxes is not None
        env = job.envelope
        fn = job.task.fn
        module = getattr(fn, "__module__", None) or ""
        qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        path = None
        if module == "__main__":
            import sys

            path = getattr(sys.modules["__main__"], "__file__", None)
        request = BoxRequest(
            id=env.id, module=module, qualname=qualname, args=env.args, kwargs=env.kwargs, path=path
        )
        # The hard limit is enforced by killing the box; the scope deadline is the soft one.
        reply = await self._boxes.run(request, timeout=None)
        if reply.ok:
            return reply.result
        raise _RemoteError(reply.error)

    async def _execute(self, job: Job, scope: anyio.CancelScope) -> None:
        """Run one job inside its runner's ``scope`` and hand its outcome over.

        Revocation, release (shutdown) and outer cancellation cancel ``scope``;
        the outcome is recorded here before the cancellation travels on.
        """
        env = job.envelope
        if self.is_revoked(job.id) or (env.expires is not None and env.expires < time.time()):
            reason = "revoked" if self.is_revoked(job.id) else "expired"
            self._finish(
                job, Outcome(state=REVOKED, error=_revoked_info(reason), worker=self.worker_name)
            )
            return
        self.running[job.id] = job
        job.scope = scope
        if self.track_started and not env.ignore_result:
            job.settle.started(job.id, functools.partial(self._started_document, env))
        started = time.perf_counter()
        limit = job.task.options.time_limit
        try:
            if limit is None:
                value = await self._run_job(job)
            else:
                with anyio.move_on_after(limit) as deadline:
                    value = await self._run_job(job)
                if deadline.cancelled_caught:
                    raise TimeLimitExceeded(f"{env.name} ran past its {limit}s limit")
        except anyio.get_cancelled_exc_class():
            if job.revoked:
                self._finish(
                    job, Outcome(state=REVOKED, error=_revoked_info("revoked while running"))
                )
            else:  # released at shutdown, or the worker itself is being cancelled
                job.settle.release(job.delivery)
            raise
        except _RemoteError as exc:
            self._finish(job, Outcome(state=FAILURE, error=exc.info, worker=self.worker_name))
        except Exception as exc:
            self._finish(
                job, Outcome(state=FAILURE, error=error_info(exc), worker=self.worker_name)
            )
        else:
            self._finish(
                job,
                Outcome(
                    state=SUCCESS,
                    result=value,
                    worker=self.worker_name,
                    runtime=time.perf_counter() - started,
                ),
            )
        finally:
            job.scope = None
            del self.running[job.id]
            if not self.running and self._stopping:
                self._idle.notify()

    def _started_document(self, env: Envelope) -> StoredDocument:
        outcome = Outcome(state=STARTED, worker=self.worker_name)
        return StoredDocument(
            id=env.id, state=STARTED, body=self.codec.encode(document_for(env, outcome))
        )

    def _finish(self, job: Job, outcome: Outcome) -> None:
        self.processed += 1
        if outcome.state == FAILURE:
            self.failed += 1
            log.warning("task %s[%s] failed: %s", job.envelope.name, job.id, _summary(outcome))
        doc = (
            None
            if job.envelope.ignore_result and outcome.state == SUCCESS
            else encode_outcome(self.codec, job, outcome)
        )
        job.settle.finished(job.delivery, doc, job.task.options.sinks)

    # -- runners and the budget --------------------------------------------------

    async def _runner(self) -> None:
        queue = self.queue
        try:
            while True:
                # One scope serves many jobs; it is replaced only after a cancellation.
                with anyio.CancelScope() as scope:
                    while not scope.cancel_called:
                        job = await queue.get()
                        if job is None:
                            return
                        if len(queue) < self._min_queued:
                            self._min_queued = len(queue)
                        await self._execute(job, scope)
                        if self._runners > self.budget.limit and not self._stopping:
                            return
                if self._stopping and not queue:
                    return
        finally:
            self._runners -= 1
            if self._stopping:
                self._idle.notify()

    def _spawn(self, count: int) -> None:
        assert self._tg is not None
        for _ in range(count):
            self._runners += 1
            self._tg.start_soon(self._runner)

    def _resize(self) -> None:
        running = len(self.running)
        queued = self._min_queued
        self._min_queued = len(self.queue)
        limit = self.budget.update(queued, running, anyio.current_time())
        if self.kind == "thread":
            self._limiter.total_tokens = max(1, limit)
        elif self._boxes is not None:
            self._boxes.resize(limit)
        if self._runners < limit:
            self._spawn(limit - self._runners)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run runners until :meth:`stop`; re-evaluate the budget every tick."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._spawn(self.budget.limit)
                task_status.started()
                while not self._stopping:
                    await anyio.sleep(self.tick)
                    if not self._stopping:
                        self._resize()
        finally:
            if self._boxes is not None:
                await self._boxes.aclose()

    def hurry(self, grace: float) -> None:
        """Shorten a grace period in progress (or the next one) to ``grace`` seconds."""
        if self._grace_scope is not None:
            self._grace_scope.deadline = min(
                self._grace_scope.deadline, anyio.current_time() + grace
            )

    async def stop(self, grace: float) -> None:
        """Release queued jobs now; give running ones ``grace`` seconds, then release them."""
        self._stopping = True
        for job in self.queue.drain():
            job.settle.release(job.delivery)
        self.queue.close()
        with anyio.move_on_after(grace) as self._grace_scope:
            while self.running:
                version = self._idle.version
                if self.running:
                    await self._idle.wait(version)
        self._grace_scope = None
        for job in list(self.running.values()):
            log.warning(
                "task %s[%s] did not finish within the grace period; returned to the broker",
                job.envelope.name,
                job.id,
            )
            job.released = True
            if job.scope is not None:
                job.scope.cancel()
        while self._runners:
            version = self._idle.version
            if self._runners:
                await self._idle.wait(version)

    @property
    def load(self) -> tuple[int, int, int]:
        """(queued, running, current limit)."""
        return len(self.queue), len(self.running), self.budget.limit


class _RemoteError(Exception):
    def __init__(self, info: Any) -> None:
        super().__init__(str(info))
        import msgspec

        self.info = msgspec.convert(info, ErrorInfo)


def _revoked_info(reason: str) -> ErrorInfo:
    return ErrorInfo(type="TaskRevoked", module="celeriac.errors", message=reason)


def _summary(outcome: Outcome) -> str:
    if outcome.error is None:
        return outcome.state
    return f"{outcome.error.type}: {outcome.error.message}"
