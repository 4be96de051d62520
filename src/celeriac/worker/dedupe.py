"""Deduplication (CEP "Deduplication"): the same logical work runs once.

A task declares ``dedupe=`` — a function of its arguments returning a key
(``lambda user_id, **_: f"welcome:{user_id}"``), or ``None`` for a call that is
not deduplicated. Before a job runs, its worker claims the key in the app's
default sink: a document ``dedupe:<task>:<key>`` written only if absent, whose
body names the message that owns it. Then:

* the owner is this message: run (a redelivery of a message whose run was cut
  short runs again: at least once);
* the claim says ``DONE`` for this message: it already ran to the end (the
  worker died before acknowledging): acknowledge it without running it again;
* another message owns the key: this one is a duplicate; it is not run and its
  result is ``REVOKED`` ("duplicate of <owner>").

On success the claim becomes ``DONE`` in the same sink write as the result. On a
final failure it is released, so a later message for the same key may try again.
Claims expire after ``dedupe_ttl`` seconds. Because claims live in the store, they
survive worker restarts, unlike the in-memory idempotent receiver.

What this cannot give is exactly-once *side effects*: a run killed after its
effect but before its result is stored runs again when redelivered. Tasks whose
effects must not repeat make them idempotent (the dedupe key is a good handle).
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from celeriac.abc import DataSink, StoredDocument

if TYPE_CHECKING:
    from celeriac.worker.job import Job

__all__ = ["CLAIMED", "DONE", "RELEASED", "Deduper", "Verdict"]

log = logging.getLogger("celeriac.worker")

CLAIMED, DONE, RELEASED = "CLAIMED", "DONE", "RELEASED"


class Verdict(enum.Enum):
    """What to do with a job after claiming its dedupe key."""

    RUN = "run"
    ALREADY_DONE = "already done"
    DUPLICATE = "duplicate"


class Deduper:
    """Claims dedupe keys in a sink (see the module docstring)."""

    def __init__(self, sink: DataSink, ttl: float, *, every_message: bool = False) -> None:
        self.sink = sink
        self.ttl = ttl
        self.every_message = every_message

    def applies(self, job: Job) -> bool:
        """Does ``job`` claim a key before it runs?"""
        return self.every_message or job.task.options.dedupe is not None

    def key_of(self, job: Job) -> str | None:
        """The job's dedupe document id, or None when the task (or this call) has none.

        With ``every_message`` (the ``receiver_store`` setting), a task without a
        dedupe function is keyed by its message id and attempt: the idempotent
        receiver's memory then lives in the store and survives worker restarts.
        A dedupe function that raises is a bug in the task: the error propagates and
        the job fails like any other.
        """
        dedupe = job.task.options.dedupe
        env = job.envelope
        if dedupe is None:
            return f"message:{env.id}#{env.attempt}" if self.every_message else None
        key = dedupe(*env.args, **env.kwargs)
        if key is None:
            return None
        return f"dedupe:{env.name}:{key}"

    async def claim(self, job: Job, doc_id: str) -> tuple[Verdict, str]:
        """Claim ``doc_id`` for ``job``; the verdict and the key's owner."""
        mine = job.id.encode()
        claim = StoredDocument(id=doc_id, state=CLAIMED, body=mine)
        await self.sink.store_if_absent([claim], self.ttl)
        current = (await self.sink.get([doc_id])).get(doc_id)
        if current is not None and current.state == RELEASED:
            # The owner gave up: take over (two takers racing both run; rare, and safe).
            await self.sink.store([claim], self.ttl)
            current = claim
        if current is None:  # expired between the two calls: as good as ours
            return Verdict.RUN, job.id
        owner = current.body.decode(errors="replace")
        if owner != job.id:
            return Verdict.DUPLICATE, owner
        if current.state == DONE:
            return Verdict.ALREADY_DONE, owner
        return Verdict.RUN, owner

    @staticmethod
    def done(job: Job, doc_id: str) -> StoredDocument:
        """The claim's final form, written with the job's result."""
        return StoredDocument(id=doc_id, state=DONE, body=job.id.encode())

    @staticmethod
    def released(doc_id: str) -> StoredDocument:
        """The claim given up after a final failure: a later message may take it."""
        return StoredDocument(id=doc_id, state=RELEASED, body=b"")
