"""The checks a canvas step or an event's command goes through before it runs.

- :func:`step_done_before`: a step whose outcome is stored already (a
  redelivery, or a second copy of a chord body) is not run again; the workflow
  is advanced again, idempotently, and the message acked.
- :func:`resolve`: a step published without its inputs' values (they would
  have made its message too big) reads them from the store.
- :func:`ran_before`: a command made from an event whose result is stored (the
  event was routed twice) is acked without running.

See :mod:`celeriac.router.router` and :mod:`celeriac.router.events`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celeriac.canvas.errors import CanvasError
from celeriac.errors import BrokerError
from celeriac.failures.backoff import Retry
from celeriac.failures.sections import Poisonous
from celeriac.router.router import ONCE, StepDone, links_of
from celeriac.tasks.outcome import FAILURE, REVOKED, SUCCESS, ErrorInfo, error_info
from celeriac.worker.job import Job

__all__ = ["ran_before", "resolve", "step_done_before"]

log = logging.getLogger("celeriac.worker")

Failed = Callable[[Job, ErrorInfo, Poisonous | Retry | None, float], None]


async def step_done_before(job: Job) -> bool:
    """A canvas step whose outcome is stored already is not run again: the
    workflow is advanced (again, idempotently) and the message acked.

    Checked for a redelivery, and for a step published after a claim (a chord
    body), whose copies must not run twice; a first delivery of an ordinary
    step skips the read.
    """
    router = job.settle.router
    assert job.step is not None
    if router is None or (job.delivery.deliveries <= 1 and ONCE not in job.envelope.headers):
        return False
    wf, step = job.step
    try:
        outcome = await router.already_done(wf, step)
    except BrokerError as exc:
        log.warning("cannot read step %d of workflow %s now, later: %s", step, wf, exc)
        job.settle.release(job.delivery, 1.0)
        return True
    if outcome is None:
        return False
    log.info("step %d of workflow %s settled before: not run again", step, wf)
    done = StepDone(wf, step, outcome, links_of(job.envelope))
    job.settle.finished(job.delivery, None, (), step=done)
    return True


async def resolve(job: Job, failed: Failed) -> bool:
    """Read a step's inputs from the store (its message left them there); False
    when the job was settled instead."""
    router = job.settle.router
    assert router is not None
    try:
        job.envelope = await router.resolve(job.envelope)
    except BrokerError as exc:
        log.warning("cannot read the inputs of %s now, later: %s", job.id, exc)
        job.settle.release(job.delivery, 1.0)
        return False
    except CanvasError as exc:
        failed(job, error_info(exc), Poisonous(), 0.0)
        return False
    return True


async def ran_before(job: Job) -> bool:
    """A command made from an event runs once: if its result is stored (the event
    was routed twice), it is acked without running."""
    try:
        found = await job.settle.sinks["default"].get([job.id])
    except BrokerError as exc:
        log.warning("cannot read the result of %s now, later: %s", job.id, exc)
        job.settle.release(job.delivery, 1.0)
        return True
    doc = found.get(job.id)
    if doc is None or doc.state not in (SUCCESS, FAILURE, REVOKED):
        return False
    log.info(
        "task %s[%s] ran before (its event came twice): not run again",
        job.envelope.name,
        job.id,
    )
    job.settle.finished(job.delivery, None, ())
    return True
