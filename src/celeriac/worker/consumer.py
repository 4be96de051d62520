"""The consumer (CEP "Consumer"): fetch, check, and hand jobs to their executor.

It holds at most ``prefetch`` unsettled deliveries. Each delivery is decoded and
checked before anything runs; what cannot run never crashes the worker:

* undecodable, unsupported-version or badly signed bodies -> dead letters;
* commands for task names not registered here -> dead letters;
* a message id already being processed here -> dropped (the in-flight one settles it);
* a message id among the last N processed (the idempotent receiver) -> acked,
  with a warning;
* revoked or expired commands -> REVOKED result, acked.

Everything else becomes a :class:`~celeriac.worker.job.Job` on the internal
queue of its task kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from celeriac._notify import Notifier
from celeriac.abc import Broker, Delivery, StoredDocument
from celeriac.errors import BrokerError, ProtocolError
from celeriac.messages import Codec
from celeriac.tasks.outcome import FAILURE, REVOKED, ErrorInfo, Outcome, document_for
from celeriac.worker.executor import Executor, encode_outcome
from celeriac.worker.job import Job, RecentIds
from celeriac.worker.settle import ResultPublisher

if TYPE_CHECKING:
    from celeriac.tasks.task import Task

__all__ = ["Consumer"]

log = logging.getLogger("celeriac.worker")


class Consumer:
    """Pulls deliveries from the broker and dispatches them."""

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str],
        tasks: Mapping[str, Task[..., object]],
        executors: Mapping[str, Executor],
        settle: ResultPublisher,
        codec: Codec,
        *,
        recent: RecentIds,
        is_revoked: Callable[[str], bool],
        prefetch: int = 256,
        fetch_timeout: float = 0.2,
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.tasks = tasks
        self.executors = executors
        self.settle = settle
        self.codec = codec
        self.recent = recent
        self.is_revoked = is_revoked
        self.prefetch = prefetch
        self.fetch_timeout = fetch_timeout
        self.held: dict[object, Delivery] = {}
        self.ids: dict[str, object] = {}  # message id -> key of the delivery being processed
        self._room = Notifier()
        self._stopping = False
        self._done = anyio.Event()
        self.duplicates = 0
        self.rejected = 0

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        """The result publisher settled these: make room for more."""
        held, ids = self.held, self.ids
        for delivery in deliveries:
            key = _key(delivery)
            if held.pop(key, None) is not None and ids.get(delivery.id) == key:
                del ids[delivery.id]
                self.recent.add(delivery.id)
        self._room.notify()

    def stop(self) -> None:
        """Stop fetching (the current fetch, if any, still completes)."""
        self._stopping = True
        self._room.notify()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fetch and dispatch until :meth:`stop`."""
        self._stopping = False
        self._done = anyio.Event()
        backoff = 0.1
        task_status.started()
        try:
            while not self._stopping:
                version = self._room.version
                room = self.prefetch - len(self.held)
                if room <= 0:
                    await self._room.wait(version, timeout=1.0)
                    continue
                # Shielded (and bounded by the fetch timeout): deliveries fetched are
                # always dispatched, never dropped by a cancellation in between.
                failure: BrokerError | None = None
                with anyio.CancelScope(shield=True):
                    try:
                        deliveries = await self.broker.fetch(self.queues, room, self.fetch_timeout)
                    except BrokerError as exc:
                        deliveries = []
                        failure = exc
                    if deliveries:
                        self.dispatch(deliveries)
                if failure is not None:
                    # The broker is away (restarting, say): wait and try again, for as
                    # long as it takes; what we hold keeps being settled meanwhile.
                    log.warning(
                        "fetch from %s failed, retrying in %.1fs: %s",
                        self.broker.url,
                        backoff,
                        failure,
                    )
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                else:
                    backoff = 0.1
        finally:
            self._done.set()

    async def wait_done(self) -> None:
        """Wait until :meth:`run` has returned (after :meth:`stop`)."""
        await self._done.wait()

    def dispatch(self, deliveries: Sequence[Delivery]) -> None:
        """Check each delivery and queue it, or settle it at once."""
        codec, settle = self.codec, self.settle
        now = time.time()
        for delivery in deliveries:
            try:
                envelope = codec.decode(delivery.body)
            except ProtocolError as exc:
                self.rejected += 1
                log.error("rejected message %s from %r: %s", delivery.id, delivery.queue, exc)
                self.held[_key(delivery)] = delivery
                settle.dead_letter(delivery, f"{type(exc).__name__}: {exc}")
                continue
            id = envelope.id
            key = _key(delivery)
            if id != delivery.id:
                self.rejected += 1
                self.held[key] = delivery
                settle.dead_letter(
                    delivery, f"IdMismatch: envelope id {id!r} is not the broker's {delivery.id!r}"
                )
                continue
            if self.ids.get(id) == key:
                continue  # the same broker message again: settling the one we hold settles it
            if id in self.ids or id in self.recent:
                self.duplicates += 1
                log.warning("duplicate message %s (%s) dropped", id, envelope.name)
                self.held[key] = delivery
                settle.finished(delivery, None, ())
                continue
            self.held[key] = delivery
            self.ids[id] = key
            if envelope.kind != "command":
                settle.dead_letter(
                    delivery, f"UnsupportedKind: {envelope.kind} messages are not run"
                )
                continue
            task = self.tasks.get(envelope.name)
            if task is None:
                log.error("unknown task %r in message %s", envelope.name, id)
                reason = f"no task named {envelope.name!r} here"
                outcome = Outcome(
                    state=FAILURE,
                    error=ErrorInfo(
                        type="UnknownTask", module="celeriac.errors", message=reason, args=[reason]
                    ),
                )
                # The caller learns at once; the message itself waits in the dead letters.
                doc = StoredDocument(
                    id=id, state=FAILURE, body=codec.encode(document_for(envelope, outcome))
                )
                settle.dead_letter(delivery, f"UnknownTask: {reason}", doc)
                continue
            if envelope.eta is not None and envelope.eta > now + 0.05:
                # Early (the broker's clock or row was changed): back until it is due.
                settle.release(delivery, envelope.eta - now)
                continue
            job = Job(delivery, envelope, task, settle)
            if self.is_revoked(id) or (envelope.expires is not None and envelope.expires < now):
                why = "revoked" if self.is_revoked(id) else "expired"
                outcome = Outcome(
                    state=REVOKED,
                    error=ErrorInfo(type="TaskRevoked", module="celeriac.errors", message=why),
                )
                settle.finished(delivery, encode_outcome(codec, job, outcome), ("default",))
                continue
            self.executors[task.kind].submit(job)


def _key(delivery: Delivery) -> object:
    receipt = delivery.receipt
    try:
        hash(receipt)
    except TypeError:
        return id(delivery)
    return (delivery.queue, receipt)
