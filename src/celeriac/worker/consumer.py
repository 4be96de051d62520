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
from celeriac.messages import Codec, Envelope
from celeriac.router.router import settled
from celeriac.scheduler.priorities import Fetch, FetchStrategy, KindLoad, QueueOrder
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
        max_deliveries: int = 5,
        strategy: FetchStrategy | None = None,
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.strategy: FetchStrategy = strategy or QueueOrder()
        # The task kinds routed to each queue, for the strategy (see scheduler/priorities.py).
        kinds: dict[str, set[str]] = {}
        for task in tasks.values():
            kinds.setdefault(task.options.queue, set()).add(task.kind)
        self.kinds = {queue: frozenset(fed) for queue, fed in kinds.items()}
        self.tasks = tasks
        self.executors = executors
        self.settle = settle
        self.codec = codec
        self.recent = recent
        self.is_revoked = is_revoked
        self.prefetch = prefetch
        self.fetch_timeout = fetch_timeout
        self.max_deliveries = max_deliveries
        self.held: dict[object, Delivery] = {}
        # A run's identity is its message id and attempt (a retry is a new run of the
        # same id): identity -> key of the delivery being processed, and back.
        self.ids: dict[str, object] = {}
        self._identities: dict[object, str] = {}
        self._room = Notifier()
        self._stopping = False
        self._done = anyio.Event()
        self.duplicates = 0
        self.rejected = 0

    def settled(self, deliveries: Sequence[Delivery], dead: Sequence[Delivery] = ()) -> None:
        """The result publisher settled these: make room for more.

        Runs that ended are remembered (the idempotent receiver drops them if they come
        again); dead letters are not, so a replay of one is run, not dropped.
        """
        held, ids, identities = self.held, self.ids, self._identities
        forget = {_key(d) for d in dead}
        for delivery in deliveries:
            key = _key(delivery)
            identity = identities.pop(key, None)
            if held.pop(key, None) is not None and identity and ids.get(identity) == key:
                del ids[identity]
                if key not in forget:
                    self.recent.add(identity)
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
                if not self.queues:  # nothing to consume on this broker: wait for stop()
                    await self._room.wait(version, timeout=1.0)
                    continue
                room = self.prefetch - len(self.held)
                if room <= 0:
                    await self._room.wait(version, timeout=1.0)
                    continue
                steps = self.strategy.plan(self.queues, self.kinds, self.load())
                if not steps:  # only saturated kinds: wait for a job to end
                    await self._room.wait(version, timeout=0.2)
                    continue
                # Shielded (and bounded by the fetch timeout): deliveries fetched are
                # always dispatched, never dropped by a cancellation in between.
                failure: BrokerError | None = None
                with anyio.CancelScope(shield=True):
                    try:
                        await self._fetch(steps, room)
                    except BrokerError as exc:
                        failure = exc
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

    async def _fetch(self, steps: Sequence[Fetch], room: int) -> None:
        """Take the plan's steps: wait on the first, go on only while they come back full."""
        timeout = self.fetch_timeout
        for step in steps:
            want = room if step.limit is None else min(room, step.limit)
            if want <= 0 or not step.queues:
                return
            deliveries = await self.broker.fetch(step.queues, want, timeout)
            if deliveries:
                self.dispatch(deliveries)
            if len(deliveries) < want:
                return
            room -= len(deliveries)
            timeout = 0.0

    def load(self) -> dict[str, KindLoad]:
        """The load of each task kind's executor, for the fetch strategy."""
        loads = {}
        for kind, executor in self.executors.items():
            queued, running, _ = executor.load
            loads[kind] = KindLoad(queued, running, executor.maximum)
        return loads

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
            identity = id if envelope.attempt == 0 else f"{id}#{envelope.attempt}"
            if self.ids.get(identity) == key:
                continue  # the same broker message again: settling the one we hold settles it
            if identity in self.ids or identity in self.recent:
                self.duplicates += 1
                log.warning("duplicate message %s (%s) dropped", id, envelope.name)
                self.held[key] = delivery
                settle.finished(delivery, None, ())
                continue
            self.held[key] = delivery
            self.ids[identity] = key
            self._identities[key] = identity
            if envelope.kind == "event":
                settle.route_event(delivery, envelope)  # the router: one command per subscriber
                continue
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
                step = settled(envelope, outcome)  # a canvas step: the workflow fails, not hangs
                settle.dead_letter(delivery, f"UnknownTask: {reason}", doc, step=step)
                continue
            if delivery.deliveries > self.max_deliveries:
                self._poisoned(delivery, envelope)
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
                doc = encode_outcome(codec, job, outcome)
                settle.finished(delivery, doc, ("default",), step=settled(envelope, outcome))
                continue
            self.executors[task.kind].submit(job)

    def _poisoned(self, delivery: Delivery, envelope: Envelope) -> None:
        """A message whose runs never settle (they kill or lose the worker): stop it here."""
        reason = (
            f"PoisonMessage: delivered {delivery.deliveries} times (bound {self.max_deliveries})"
            " without being settled; its runs may kill the worker"
        )
        log.error("task %s[%s]: %s", envelope.name, envelope.id, reason)
        outcome = Outcome(
            state=FAILURE,
            error=ErrorInfo(
                type="PoisonMessage", module="celeriac.errors", message=reason, args=[reason]
            ),
        )
        doc = StoredDocument(
            id=envelope.id, state=FAILURE, body=self.codec.encode(document_for(envelope, outcome))
        )
        self.settle.dead_letter(delivery, reason, doc, step=settled(envelope, outcome))


def _key(delivery: Delivery) -> object:
    receipt = delivery.receipt
    try:
        hash(receipt)
    except TypeError:
        return id(delivery)
    return (delivery.queue, receipt)
