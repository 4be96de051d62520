"""What a failed job becomes: a retry, or a final failure kept as a dead letter.

The CEP's rule: retry by default, never indefinitely, and keep what cannot be done
for inspection. A job that raised goes through :meth:`Failures.failed`:

* a failure inside ``with poisonous():`` is final at once;
* a failure inside ``with retry(...):`` follows that section's policy;
* any other follows the task's ``retry=`` policy, or the app's default
  (``Retry()`` unless configured); ``retry=None`` means no retries.

A retry is a *new message*: the same task id with ``attempt + 1`` and an ``eta``
after the policy's delay, published to the queue the job came from before the
job's own delivery is acknowledged (the result publisher keeps that order), with
a ``RETRY`` document in the meantime. No worker sleeps through a backoff. A final
failure stores the ``FAILURE`` document and moves the message to the dead letters
with the reason and the error, where ``celeriac dlq`` can show and replay it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import msgspec

from celeriac.abc import Outgoing, StoredDocument
from celeriac.failures.backoff import Retry
from celeriac.failures.decision import GiveUp, decide_marked
from celeriac.failures.sections import Poisonous
from celeriac.messages import Codec
from celeriac.router.router import settled
from celeriac.tasks.outcome import FAILURE, RETRY, ErrorInfo, Outcome, document_for
from celeriac.worker.dedupe import Deduper

if TYPE_CHECKING:
    from celeriac.worker.job import Job

__all__ = ["Failures"]

log = logging.getLogger("celeriac.worker")


class Failures:
    """Decides and carries out what happens to each failed job of one worker."""

    def __init__(
        self,
        codec: Codec,
        default_retry: Retry | None,
        *,
        worker_name: str,
        rng: random.Random | None = None,
    ) -> None:
        self.codec = codec
        self.default_retry = default_retry
        self.worker_name = worker_name
        self.rng = rng or random.Random()
        self.retried = 0
        self.dead = 0

    def task_policy(self, job: Job) -> Retry | None:
        """The job's own retry policy: the task's, else the app's default."""
        chosen = job.task.options.retry
        return self.default_retry if chosen == "app" else chosen

    def failed(
        self, job: Job, error: ErrorInfo, section: Poisonous | Retry | None, runtime: float
    ) -> None:
        """Retry ``job`` under its policy, or give up: FAILURE result and a dead letter."""
        env = job.envelope
        decision = decide_marked(section, self.task_policy(job), env.attempt, self.rng)
        summary = f"{error.type}: {error.message}"
        if isinstance(decision, GiveUp):
            if decision.poisonous:
                reason = f"Poisonous: failed in a poisonous section: {summary}"
            elif decision.reason == "no retry policy":
                reason = f"Failed (no retry policy): {summary}"
            else:
                reason = f"RetriesExhausted: failed after {env.attempt} retries: {summary}"
            self._give_up(job, error, runtime, reason)
            return
        delay = decision.seconds
        policy = section if isinstance(section, Retry) else self.task_policy(job)
        assert policy is not None  # a retry decision always has a policy
        now = time.time()
        again = msgspec.structs.replace(
            env, attempt=env.attempt + 1, eta=now + delay, sent_at=now, signature=None
        )
        outgoing = Outgoing(
            queue=job.delivery.queue,
            id=env.id,
            body=self.codec.encode(again),
            priority=env.priority,
            eta=again.eta,
        )
        doc = None
        if not env.ignore_result:
            outcome = Outcome(state=RETRY, error=error, worker=self.worker_name, runtime=runtime)
            body = self.codec.encode(document_for(env, outcome))
            doc = StoredDocument(id=env.id, state=RETRY, body=body)
        self.retried += 1
        log.warning(
            "task %s[%s] failed (%s); retry %d of %d in %.2fs",
            env.name,
            env.id,
            summary,
            env.attempt + 1,
            policy.max_retries,
            delay,
        )
        job.settle.retry(job.delivery, outgoing, doc)

    def _give_up(self, job: Job, error: ErrorInfo, runtime: float, reason: str) -> None:
        env = job.envelope
        self.dead += 1
        log.error("task %s[%s] gave up: %s", env.name, env.id, reason)
        outcome = Outcome(state=FAILURE, error=error, worker=self.worker_name, runtime=runtime)
        doc = StoredDocument(
            id=env.id, state=FAILURE, body=self.codec.encode(document_for(env, outcome))
        )
        also = [Deduper.released(job.dedupe_id)] if job.dedupe_id else []
        step = settled(env, outcome) if job.step is not None else None
        job.settle.dead_letter(job.delivery, reason, doc, job.task.options.sinks, also, step)
