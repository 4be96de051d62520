"""The router as process manager (CEP "Router"): it drives running canvases.

A canvas is started by storing its normal form (:mod:`celeriac.router.store`) and
publishing its root steps. From then on, whichever worker settles a step advances
the workflow, from the stored state, before it acknowledges the step's message:

1. it stores the step's outcome;
2. if the step's task failed, it publishes the step's error callbacks, each once
   (a claim per callback in the coordinator);
3. for each step waiting for it: a step with one input is ready at once; a step
   with several (a join, a chord body) counts this input with
   :meth:`~celeriac.abc.Coordinator.tally`, which is idempotent per input, so a
   redelivered result is not counted twice; the caller that sees the count reach
   the number of inputs claims the step (``claim``, owner: the settling step), and
   only the claim's holder goes on;
4. a ready task step is published as a message that carries the workflow id
   (``correlation_id``), the step id (header ``celeriac-step``) and its own call,
   never the rest of the graph; when the values of its inputs would make the
   message larger than :data:`INLINE` bytes (a chord body over thousands of
   results), they stay in the store and the worker that runs the step reads
   them (header ``celeriac-resolve``), so no message grows with the canvas; a
   join, or a step that is skipped because an input failed, settles right there
   and the walk goes on from it;
5. the final step's outcome becomes the workflow's result document.

Because the step message's id is derived from (workflow, step), a step published
twice is the same message twice, and a step whose outcome is stored is not run
again (the worker checks, see :meth:`Router.already_done`). A ready step is
published at most once: the claim's holder marks it published right after the
broker accepted it, so only a holder that dies in that instant (between the
broker's answer and the mark) leaves a second copy to be published by the
redelivery; that copy is not run if the first one has finished. Error callbacks
are marked the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.abc import Coordinator, Outgoing, StoredDocument
from celeriac.canvas.errors import CanvasError
from celeriac.canvas.graph import Graph, StepRecord, step_task_id
from celeriac.canvas.outcomes import (
    Call,
    Done,
    Failed,
    GroupFailure,
    StepOutcome,
    TaskFailure,
    errback_call,
    prepare,
)
from celeriac.canvas.signature import Options
from celeriac.canvas.status import StepState, WorkflowRun
from celeriac.messages import Envelope
from celeriac.router.events import Subscriber, Subscriptions, commands_for
from celeriac.router.store import StepDoc, WorkflowStore
from celeriac.tasks.outcome import FAILURE, SUCCESS, ErrorInfo, Outcome, document_for

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.runtime import Runtime

__all__ = [
    "INLINE",
    "ONCE",
    "RESOLVE",
    "STARMAP",
    "STEP",
    "Router",
    "StepDone",
    "final_document",
    "links_of",
    "settled",
    "step_of",
]

log = logging.getLogger("celeriac.router")

STEP = "celeriac-step"  #: header: the step id (the workflow id is the correlation id)
ONCE = "celeriac-once"  #: header: a step published after a claim; always check for an outcome
STARMAP = "celeriac-apply"  #: header "starmap": the last argument is a list of calls
RESOLVE = "celeriac-resolve"  #: header: the step's call is read from the store when it runs
NEXT = "celeriac-next"  #: header of a root with no stored record: the steps waiting for it
FINAL = "celeriac-final"  #: header "1": that root's outcome is the workflow's result
LIGHT = 16  #: a root with at most this many dependents (and no callbacks, no name) is light
INLINE = 2048  #: past this many bytes, a step's message leaves its inputs' values in the store


class StepDone(msgspec.Struct, frozen=True):
    """Step ``step`` of workflow ``workflow`` settled with ``outcome``.

    ``links`` is what its message said of the steps waiting for it and whether it
    is the final step (a light root has no stored record); ``None``: read the record.
    """

    workflow: str
    step: int
    outcome: StepOutcome
    links: tuple[tuple[int, ...], bool] | None = None


class Router:
    """Starts canvases and advances them as their steps settle (see the module docstring).

    It works in any runtime of the app: the producer's (to start) and each
    worker's (to advance), with the runtime's default sink, brokers and
    coordinator.
    """

    def __init__(self, app: App, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.store = WorkflowStore(runtime.sink, app.settings.result_ttl)
        self.ttl = app.settings.result_ttl or 7 * 86400.0
        self._subscriptions: Subscriptions | None = None

    async def _coordinator(self) -> Coordinator:
        return await self.runtime.coordination()

    # -- starting -----------------------------------------------------------------------

    async def start(self, graph: Graph) -> None:
        """Store ``graph`` and publish its roots; the workflow's result is ``graph.id``.

        Light roots (no name, no error callbacks, a few dependents: a group's
        members) get no stored record: their messages say what waits for them, so a
        10,000-member chord stores its joins and body, not 10,000 member records.
        """
        dependents = graph.dependents()
        light = {
            step.id: (tuple(dependents[step.id]), step.id == graph.workflow.final)
            for step in graph.roots()
            if step.task is not None
            and step.name is None
            and not step.errbacks
            and len(dependents[step.id]) <= LIGHT
        }
        await self.store.save(graph, skip=light.keys())
        ready: list[tuple[StepRecord, Call]] = []
        settled: list[StepDone] = []
        for step in graph.roots():
            prepared = prepare(step, [])
            if isinstance(prepared, Call):
                ready.append((step, prepared))
            else:  # an empty group: a join with no inputs settles at once
                settled.append(StepDone(graph.id, step.id, prepared))
        await self._publish(graph.id, ready, once=False, links=light)
        if settled:
            await self.advance(settled)

    async def status(self, workflow: str) -> WorkflowRun | None:
        """Which steps of a run are pending, running (published, not settled), done,
        failed or skipped; ``None`` if the workflow is not stored (or expired)."""
        meta = await self.store.meta(workflow)
        if meta is None:
            return None
        size = meta.workflow.size
        docs = await self.store.steps(workflow, range(size))
        outcomes = await self.store.outcomes(workflow, range(size))
        states: list[StepState] = []
        for n in range(size):
            outcome = outcomes.get(n)
            if isinstance(outcome, Done):
                states.append("done")
            elif isinstance(outcome, Failed):
                states.append("failed")
            elif outcome is not None:
                states.append("skipped")
            else:
                doc = docs.get(n)
                # No record: a light root, published when the workflow started.
                published = doc is None or (
                    not doc.step.is_join and all(s in outcomes for s in doc.step.waits_for())
                )
                states.append("running" if published else "pending")
        names = {doc.step.name: n for n, doc in docs.items() if doc.step.name is not None}
        return WorkflowRun(workflow, meta.workflow.final, tuple(states), names, meta.workflow.name)

    # -- advancing ----------------------------------------------------------------------

    async def already_done(self, workflow: str, step: int) -> StepOutcome | None:
        """The stored outcome of a step, if it settled before (then it is not run again)."""
        return (await self.store.outcomes(workflow, [step])).get(step)

    def outcome_documents(self, done: Sequence[StepDone]) -> list[StoredDocument]:
        """The outcome documents of these steps, for a caller that stores them with its
        own documents (in the default sink) before calling :meth:`advance` with
        ``stored=True``: one write fewer per batch."""
        return self.store.outcome_documents([(d.workflow, d.step, d.outcome) for d in done])

    async def advance(self, done: Sequence[StepDone], *, stored: bool = False) -> None:
        """Record these outcomes (unless ``stored``) and move their workflows on;
        idempotent."""
        todo = list(done)
        while todo:
            todo = await self._advance(todo, stored)
            stored = False  # joins and skips settled on the way are stored here

    async def _advance(self, done: list[StepDone], stored: bool) -> list[StepDone]:
        if not stored:
            await self.store.settle([(d.workflow, d.step, d.outcome) for d in done])
        later: list[StepDone] = []
        by_workflow: dict[str, list[StepDone]] = {}
        for item in done:
            by_workflow.setdefault(item.workflow, []).append(item)
        for wf, items in by_workflow.items():
            later += await self._advance_workflow(wf, items)
        return later

    async def _advance_workflow(self, wf: str, items: list[StepDone]) -> list[StepDone]:
        docs = await self.store.steps(wf, [d.step for d in items if d.links is None])
        for item in items:
            if item.links is not None:  # a light root: its message said it all
                dependents, final = item.links
                record = StepRecord(item.step, task="")
                docs[item.step] = StepDoc(record, dependents, final)
        if len(docs) < len(items):
            log.warning("workflow %s is no longer stored (expired?): not advanced", wf)
            return []
        await self._finals(wf, [item for item in items if docs[item.step].final])
        await self._errbacks(wf, items, docs)
        candidates: dict[int, list[int]] = {}  # dependent -> settled steps feeding it
        for item in items:
            for dependent in docs[item.step].dependents:
                candidates.setdefault(dependent, []).append(item.step)
        if not candidates:
            return []
        waiting = await self.store.steps(wf, candidates)
        coordinator: Coordinator | None = None
        ready: list[StepDoc] = []
        for n, fed_by in candidates.items():
            doc = waiting.get(n)
            if doc is None:
                continue
            sources = doc.step.waits_for()
            if len(sources) == 1:
                ready.append(doc)
                continue
            coordinator = coordinator or await self._coordinator()
            if await self._complete(coordinator, wf, n, fed_by, len(sources)):
                ready.append(doc)
        return await self._run_ready(wf, ready, coordinator)

    async def _complete(
        self, coordinator: Coordinator, wf: str, n: int, fed_by: list[int], goal: int
    ) -> bool:
        """Count these inputs of step ``n``; True if this caller now holds its claim."""
        members = [str(source) for source in fed_by]  # one round trip for the whole batch
        count = await coordinator.tally(f"wf:{wf}:in:{n}", members, self.ttl)
        if count < goal:
            return False
        owner = str(fed_by[-1])
        holder = await coordinator.claim(f"wf:{wf}:go:{n}", owner, self.ttl)
        if holder != owner:  # another input's settling published it
            return False
        return await coordinator.add(f"wf:{wf}:pub:{n}", 0, self.ttl) == 0

    async def _run_ready(
        self, wf: str, ready: list[StepDoc], coordinator: Coordinator | None
    ) -> list[StepDone]:
        if not ready:
            return []
        needed = {s for doc in ready for s in doc.step.waits_for()}
        outcomes = await self.store.outcomes(wf, needed)
        calls: list[tuple[StepRecord, Call]] = []
        once: list[tuple[StepRecord, Call]] = []
        settled: list[StepDone] = []
        for doc in ready:
            step = doc.step
            if any(s not in outcomes for s in step.waits_for()):
                log.warning("workflow %s step %d: an input's outcome is missing", wf, step.id)
                continue
            after = outcomes[step.after] if step.after is not None else None
            prepared = prepare(step, [outcomes[s] for s in step.inputs], after)
            if isinstance(prepared, Call):
                (once if len(step.waits_for()) > 1 else calls).append((step, prepared))
            else:
                settled.append(StepDone(wf, step.id, prepared))
        await self._publish(wf, calls, once=False)
        if once:
            await self._publish(wf, once, once=True)
            assert coordinator is not None
            for step, _ in once:
                await coordinator.add(f"wf:{wf}:pub:{step.id}", 1, self.ttl)
        return settled

    # -- what settling means beyond the next steps --------------------------------------

    async def _finals(self, wf: str, items: list[StepDone]) -> None:
        if not items:
            return
        meta = await self.store.meta(wf)
        name = meta.workflow.name or "" if meta is not None else ""
        docs = [final_document(self.app, wf, name, item.outcome) for item in items]
        await self.runtime.sink.store(docs, self.app.settings.result_ttl)

    async def _errbacks(self, wf: str, items: list[StepDone], docs: dict[int, StepDoc]) -> None:
        failed = [
            (item, docs[item.step].step)
            for item in items
            if isinstance(item.outcome, Failed)
            and isinstance(item.outcome.failure, TaskFailure)
            and docs[item.step].step.errbacks
        ]
        if not failed:
            return
        meta = await self.store.meta(wf)
        if meta is None:
            return
        coordinator = await self._coordinator()
        outgoing = []
        for item, step in failed:
            assert isinstance(item.outcome, Failed)
            failure = item.outcome.failure
            assert isinstance(failure, TaskFailure)
            for index in step.errbacks:
                key = f"wf:{wf}:eb:{step.id}:{index}"
                if await coordinator.add(key, 0, self.ttl):
                    continue  # published already (this is a redelivery)
                errback = meta.errbacks[index]
                call = errback_call(errback, failure.task_id, failure.error)
                envelope = self._envelope(
                    _errback_id(wf, step.id, index),
                    call,
                    errback.options,
                    wf,
                    {"celeriac-errback-of": failure.task_id},
                )
                outgoing.append((envelope, key))
        by_url = self._by_url([e for e, _ in outgoing])
        for url, messages in by_url.items():
            await self.runtime.brokers[url].publish(messages)
        for _, key in outgoing:
            await coordinator.add(key, 1, self.ttl)

    # -- events -------------------------------------------------------------------------

    async def subscriptions(self) -> Subscriptions:
        """The app's shared subscriber lists (made on first use)."""
        if self._subscriptions is None:
            self._subscriptions = Subscriptions(self.runtime.sink, await self._coordinator())
        return self._subscriptions

    async def register(self) -> None:
        """Record this app's subscriptions in the store, for whichever worker routes."""
        subscriptions = await self.subscriptions()
        for event, tasks in self.app.subscriptions.items():
            await subscriptions.add(event, [self._subscriber(task) for task in tasks])

    def _subscriber(self, task: str) -> Subscriber:
        known = self.app.tasks.get(task)
        queue = known.options.queue if known is not None else None
        return Subscriber(task, queue or self.app._route(task, None)[1] or "default")

    async def fan_out(self, events: Sequence[Envelope]) -> None:
        """Publish one command per subscriber of each event, once (see router/events.py)."""
        subscriptions = await self.subscriptions()
        coordinator = subscriptions.coordinator
        for event in events:
            mark = f"ev:{event.id}:pub"
            if await coordinator.add(mark, 0, self.ttl):
                continue  # a redelivery: its commands were published already
            subscribers = await subscriptions.of(event.name)
            if not subscribers:
                log.warning("event %s[%s] has no subscribers", event.name, event.id)
            for url, messages in self._by_url(commands_for(event, subscribers)).items():
                await self.runtime.brokers[url].publish(messages)
            await coordinator.add(mark, 1, self.ttl)

    # -- publishing ---------------------------------------------------------------------

    async def _publish(
        self,
        wf: str,
        calls: list[tuple[StepRecord, Call]],
        *,
        once: bool,
        links: Mapping[int, tuple[tuple[int, ...], bool]] | None = None,
    ) -> None:
        if not calls:
            return
        envelopes = []
        for step, call in calls:
            headers = {STEP: str(step.id)}
            if once:
                headers[ONCE] = "1"
            link = links.get(step.id) if links else None
            if link is not None:
                headers[NEXT] = ",".join(map(str, link[0])) or "-"
                if link[1]:
                    headers[FINAL] = "1"
            envelope = self._envelope(step_task_id(wf, step.id), call, step.options, wf, headers)
            if step.inputs and len(self.app.codec.encode(envelope)) > INLINE:
                # Its inputs' values (a chord's thousands of results, say) stay in the
                # store; the worker that runs it reads them (:meth:`resolve`).
                envelope = msgspec.structs.replace(
                    envelope, args=[], kwargs={}, headers={**envelope.headers, RESOLVE: "1"}
                )
                envelope.headers.pop(STARMAP, None)
            envelopes.append(envelope)
        for url, messages in self._by_url(envelopes).items():
            await self.runtime.brokers[url].publish(messages)

    async def resolve(self, envelope: Envelope) -> Envelope:
        """A step message published without its inputs, with its whole call again."""
        where = step_of(envelope)
        assert where is not None
        wf, n = where
        doc = (await self.store.steps(wf, [n])).get(n)
        if doc is None:
            raise CanvasError(f"workflow {wf} is no longer stored: step {n} cannot run")
        step = doc.step
        outcomes = await self.store.outcomes(wf, step.waits_for())
        after = outcomes.get(step.after) if step.after is not None else None
        prepared = prepare(step, [outcomes[s] for s in step.inputs], after)
        if not isinstance(prepared, Call):
            raise CanvasError(f"workflow {wf} step {n} has nothing to run ({prepared!r})")
        full = self._envelope(envelope.id, prepared, step.options, wf, {})
        headers = {k: v for k, v in envelope.headers.items() if k != RESOLVE}
        headers.update({k: v for k, v in full.headers.items() if k == STARMAP})
        return msgspec.structs.replace(
            envelope, args=full.args, kwargs=full.kwargs, headers=headers
        )

    def _envelope(
        self, id: str, call: Call, options: Options, wf: str, headers: dict[str, str]
    ) -> Envelope:
        task = self.app.tasks.get(call.task)
        queue = options.queue or (task.options.queue if task is not None else None)
        if queue is None:
            queue = self.app._route(call.task, None)[1] or "default"
        priority = options.priority
        if priority is None:
            priority = task.options.priority if task is not None else 0
        now = time.time()
        args: list[Any] = list(call.args)
        all_headers = {**options.headers, **headers}
        if call.each is not None:
            args.append([list(item) for item in call.each])
            all_headers[STARMAP] = "starmap"
        return Envelope(
            id=id,
            name=call.task,
            args=args,
            kwargs=dict(call.kwargs),
            headers=all_headers,
            eta=now + options.countdown if options.countdown else None,
            expires=now + options.expires if options.expires else None,
            priority=priority,
            queue=queue,
            correlation_id=wf,
            sent_at=now,
        )

    def _by_url(self, envelopes: list[Envelope]) -> dict[str, list[Outgoing]]:
        out: dict[str, list[Outgoing]] = {}
        for envelope in envelopes:
            url, _ = self.app._route(envelope.name, envelope.queue)
            out.setdefault(url, []).append(
                Outgoing(
                    queue=envelope.queue,
                    id=envelope.id,
                    body=self.app.codec.encode(envelope),
                    priority=envelope.priority,
                    eta=envelope.eta,
                )
            )
        return out


def final_document(app: App, wf: str, name: str, outcome: StepOutcome) -> StoredDocument:
    """The workflow's result document: what ``Result(app, wf).get()`` returns or raises."""
    if isinstance(outcome, Done):
        result = Outcome(state=SUCCESS, result=outcome.value)
    else:
        failure = outcome.failure if isinstance(outcome, Failed) else outcome.cause
        result = Outcome(state=FAILURE, error=_error_of(failure))
    body = app.codec.encode(document_for(Envelope(id=wf, name=name, correlation_id=wf), result))
    return StoredDocument(id=wf, state=result.state, body=body)


def _errback_id(wf: str, step: int, index: int) -> str:
    return hashlib.blake2b(f"{wf}:{step}:errback:{index}".encode(), digest_size=16).hexdigest()


def _error_of(failure: TaskFailure | GroupFailure) -> ErrorInfo:
    if isinstance(failure, TaskFailure):
        return failure.error
    indices = [member.index for member in failure.failures]
    return ErrorInfo(
        type="GroupFailed",
        module="celeriac.canvas.errors",
        message=f"{len(indices)} of {failure.size} members failed: {indices}",
        args=[msgspec.to_builtins(failure)],
    )


def step_of(envelope: Envelope) -> tuple[str, int] | None:
    """(workflow id, step id) when ``envelope`` is a step of a running canvas."""
    step = envelope.headers.get(STEP)
    if step is None or not envelope.correlation_id:
        return None
    try:
        return envelope.correlation_id, int(step)
    except ValueError:
        return None


def settled(envelope: Envelope, outcome: Outcome) -> StepDone | None:
    """The :class:`StepDone` of a step's final outcome (``None`` for other messages)."""
    where = step_of(envelope)
    if where is None:
        return None
    wf, step = where
    links = links_of(envelope)
    if outcome.state == SUCCESS:
        return StepDone(wf, step, Done(outcome.result), links)
    error = outcome.error or ErrorInfo(
        type="TaskError", module="celeriac.errors", message=f"ended in state {outcome.state}"
    )
    failed = Failed(TaskFailure(step, envelope.id, envelope.name, error))
    return StepDone(wf, step, failed, links)


def links_of(envelope: Envelope) -> tuple[tuple[int, ...], bool] | None:
    """What a light root's message says of its dependents and finality (else None)."""
    after = envelope.headers.get(NEXT)
    if after is None:
        return None
    try:
        dependents = () if after == "-" else tuple(int(n) for n in after.split(","))
    except ValueError:
        return None
    return dependents, envelope.headers.get(FINAL) == "1"
