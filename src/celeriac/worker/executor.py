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
import msgspec

from celeriac._notify import Notifier
from celeriac.abc import StoredDocument
from celeriac.errors import BrokerError, TimeLimitExceeded
from celeriac.failures.backoff import Retry
from celeriac.failures.sections import Poisonous, policy_of
from celeriac.messages import Codec, Envelope
from celeriac.router.events import EVENT
from celeriac.router.router import RESOLVE, STARMAP, settled
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
from celeriac.worker.canvas_steps import ran_before, resolve, step_done_before
from celeriac.worker.dedupe import Deduper, Verdict
from celeriac.worker.failing import Failures
from celeriac.worker.gate import Gate
from celeriac.worker.job import Job
from celeriac.worker.jobqueue import JobQueue
from celeriac.worker.suspend import Suspensions

if TYPE_CHECKING:
    from celeriac.tasks.task import Kind

__all__ = ["Executor", "TimeLimitExceeded", "encode_outcome"]

log = logging.getLogger("celeriac.worker")


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
        failures: Failures,
        deduper: Deduper | None = None,
        suspensions: Suspensions | None = None,
        gate: Gate | None = None,
        track_started: bool = True,
        tick: float = 0.01,
    ) -> None:
        self.kind = kind
        self.budget = budget
        self.codec = codec
        self.worker_name = worker_name
        self.is_revoked = is_revoked
        self.failures = failures
        self.deduper = deduper
        self.suspensions = suspensions or Suspensions()
        self.gate = gate
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
        each = _each(env)
        if each is None:
            return await job.task.fn(*env.args, **env.kwargs)
        return [await job.task.fn(*args, **env.kwargs) for args in each]

    async def _run_thread(self, job: Job) -> Any:
        env = job.envelope
        each = _each(env)
        fn = job.task.fn
        if each is None:
            call = functools.partial(fn, *env.args, **env.kwargs)
        else:
            call = functools.partial(_call_each, fn, each, env.kwargs)
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
        results = []
        for args in _each(env) or [env.args]:  # a chunk: one request per call, in turn
            request = BoxRequest(
                id=env.id,
                module=module,
                qualname=qualname,
                args=args,
                kwargs=env.kwargs,
                path=path,
                soft_time_limit=job.task.options.soft_time_limit,
            )
            # The hard limit is enforced by killing the box.
            reply = await self._boxes.run(request, timeout=None)
            if not reply.ok:
                raise _RemoteError(reply.error, Poisonous() if reply.poisonous else reply.retry)
            results.append(reply.result)
        return results if _each(env) is not None else results[0]

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
        if self.suspensions.holds(job, time.monotonic()):
            return  # parked until its task's suspension ends, or back to the broker
        if job.step is not None and await step_done_before(job):
            return
        if RESOLVE in env.headers and not await resolve(job, self._failed):
            return
        env = job.envelope
        if EVENT in env.headers and await ran_before(job):
            return
        if self.deduper is not None and self.deduper.applies(job) and not await self._claim(job):
            return
        gate = self.gate if self.gate is not None and self.gate.applies(job) else None
        if gate is not None and not job.admitted and not await gate.enter(job):
            return  # it waits in the gate for its limits, and comes back admitted
        self.running[job.id] = job
        job.scope = scope
        if self.track_started and not env.ignore_result:
            job.settle.started(job.id, functools.partial(self._started_document, env))
        started = time.perf_counter()
        try:
            value = await self._run_limited(job)
        except anyio.get_cancelled_exc_class():
            self.suspensions.released(job)
            if job.revoked:
                self._finish(
                    job, Outcome(state=REVOKED, error=_revoked_info("revoked while running"))
                )
            else:  # released at shutdown, or the worker itself is being cancelled
                job.settle.release(job.delivery)
            raise
        except _RemoteError as exc:
            self._failed(job, exc.info, exc.policy, time.perf_counter() - started)
        except Exception as exc:
            self._failed(job, error_info(exc), policy_of(exc), time.perf_counter() - started)
        else:
            self.suspensions.succeeded(job)
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
            if gate is not None:
                gate.leave(job)
            job.scope = None
            del self.running[job.id]
            if not self.running and self._stopping:
                self._idle.notify()

    async def _run_limited(self, job: Job) -> Any:
        """Run ``job`` under its time limits (see docs/failure-handling.md).

        Coroutines are cancelled at the soft limit (or the hard one, if that is all
        there is): their ``finally`` blocks and ``async with`` exits run. A thread
        cannot be interrupted: past its soft limit a warning is logged, at the hard
        limit it is abandoned (left to finish on its own, its result ignored) and the
        job fails. A boxed task's box times the soft limit of the call itself
        (``TimeLimitExceeded`` is raised inside it; the box's start-up does not count)
        and its process is killed at the hard limit.
        """
        options = job.task.options
        hard, soft = options.time_limit, options.soft_time_limit
        name = job.envelope.name
        if hard is None and soft is None:
            return await self._run_job(job)
        abandoned = " (its thread was abandoned)" if self.kind == "thread" else ""
        if self.kind == "coroutine" or soft is None:
            limit = min(x for x in (hard, soft) if x is not None)
            which = "soft " if soft is not None and limit == soft else ""
            with anyio.move_on_after(limit):
                return await self._run_job(job)
            raise TimeLimitExceeded(f"{name} ran past its {which}time limit of {limit}s{abandoned}")
        timer = anyio.CancelScope()
        assert self._tg is not None
        self._tg.start_soon(self._soft_limit, job, soft, timer)
        try:
            if hard is None:
                return await self._run_job(job)
            with anyio.move_on_after(hard):
                return await self._run_job(job)
            raise TimeLimitExceeded(f"{name} ran past its time limit of {hard}s{abandoned}")
        finally:
            timer.cancel()

    async def _soft_limit(self, job: Job, soft: float, timer: anyio.CancelScope) -> None:
        with timer:
            await anyio.sleep(soft)
            log.warning(
                "task %s[%s] is past its soft time limit of %ss", job.envelope.name, job.id, soft
            )

    def _failed(
        self, job: Job, error: ErrorInfo, section: Poisonous | Retry | None, runtime: float
    ) -> None:
        self.processed += 1
        self.failed += 1
        self.suspensions.failed(job)
        self.failures.failed(job, error, section, runtime)

    async def _claim(self, job: Job) -> bool:
        """Claim the job's dedupe key; False when the job was settled instead of run."""
        assert self.deduper is not None
        try:
            doc_id = self.deduper.key_of(job)
        except Exception as exc:  # the task's dedupe function is broken: retrying won't help
            self._failed(job, error_info(exc), Poisonous(), 0.0)
            return False
        if doc_id is None:
            return True
        try:
            verdict, owner = await self.deduper.claim(job, doc_id)
        except BrokerError as exc:
            log.warning("could not claim %s for %s, retrying later: %s", doc_id, job.id, exc)
            job.settle.release(job.delivery, 1.0)
            return False
        if verdict is Verdict.DUPLICATE:
            log.info("task %s[%s] is a duplicate of %s: not run", job.envelope.name, job.id, owner)
            info = ErrorInfo(
                type="TaskRevoked",
                module="celeriac.errors",
                message=f"duplicate of {owner}",
                args=[f"duplicate of {owner}"],
            )
            self._finish(job, Outcome(state=REVOKED, error=info, worker=self.worker_name))
            return False
        if verdict is Verdict.ALREADY_DONE:  # ran to the end before; only the ack was lost
            job.settle.finished(job.delivery, None, ())
            return False
        job.dedupe_id = doc_id
        return True

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
        also = []
        if job.dedupe_id is not None:
            claim = job.dedupe_id
            done = outcome.state == SUCCESS
            also.append(Deduper.done(job, claim) if done else Deduper.released(claim))
        step = settled(job.envelope, outcome) if job.step is not None else None
        job.settle.finished(job.delivery, doc, job.task.options.sinks, also, step)

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
                        for job in self.suspensions.due(time.monotonic(), self.kind):
                            self.queue.put(job, job.envelope.priority)
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
        for job in self.queue.drain() + self.suspensions.drain(self.kind):
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
    def maximum(self) -> int:
        """The most jobs this executor's budget may ever run at once."""
        return int(getattr(self.budget, "maximum", self.budget.limit))

    @property
    def load(self) -> tuple[int, int, int]:
        """(queued, running, current limit)."""
        return len(self.queue), len(self.running), self.budget.limit


class _RemoteError(Exception):
    """A boxed task's error, with the section policy it left (if any)."""

    def __init__(self, info: Any, policy: Poisonous | Retry | None = None) -> None:
        super().__init__(str(info))
        self.info = msgspec.convert(info, ErrorInfo)
        self.policy = policy


def _each(env: Envelope) -> list[list[Any]] | None:
    """The argument lists of a chunk (a starmap step), or None for one plain call."""
    if env.headers.get(STARMAP) != "starmap" or not env.args:
        return None
    prefix, items = env.args[:-1], env.args[-1]
    return [[*prefix, *item] for item in items]


def _call_each(fn: Callable[..., Any], each: list[list[Any]], kwargs: dict[str, Any]) -> list[Any]:
    return [fn(*args, **kwargs) for args in each]


def _revoked_info(reason: str) -> ErrorInfo:
    return ErrorInfo(type="TaskRevoked", module="celeriac.errors", message=reason)


def _summary(outcome: Outcome) -> str:
    if outcome.error is None:
        return outcome.state
    return f"{outcome.error.type}: {outcome.error.message}"
