"""Where a running workflow lives: small documents in the app's default sink.

One workflow is stored as:

- ``wf:<id>``: its :class:`~celeriac.canvas.graph.WorkflowRecord` and error
  callbacks (:class:`Meta`);
- ``wf:<id>:s:<n>``: step ``n``'s record and the ids of the steps waiting for it
  (:class:`StepDoc`), written once when the workflow starts;
- ``wf:<id>:o:<n>``: step ``n``'s outcome (:data:`~celeriac.canvas.outcomes.StepOutcome`),
  written when it settles;
- ``<id>``: the workflow's result, a plain task result document, so
  ``Result(app, id).get()`` waits for the whole canvas like for any task.

Every document expires with the app's ``result_ttl``: the results of a finished
workflow go away like task results do. Counting (how many inputs of a step have
settled) and claiming (who publishes a ready step) happen in the coordinator,
under keys ``wf:<id>:in:<n>``, ``wf:<id>:go:<n>`` and ``wf:<id>:pub:<n>``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import anyio
import msgspec

from celeriac.abc import DataSink, StoredDocument
from celeriac.canvas.graph import Graph, StepRecord, WorkflowRecord
from celeriac.canvas.outcomes import StepOutcome
from celeriac.canvas.signature import Signature

__all__ = ["Meta", "StepDoc", "WorkflowStore"]

_BATCH = 1000  # documents per sink write when a workflow is saved
_WRITERS = 4  # sink writes at once when a workflow is saved
_CACHED = 10_000  # step records kept after reading (they never change)


class Meta(msgspec.Struct, frozen=True):
    """A workflow's record and its error callbacks."""

    workflow: WorkflowRecord
    errbacks: tuple[Signature, ...] = ()


class StepDoc(msgspec.Struct, frozen=True, omit_defaults=True):
    """One step as stored: its record, the steps that wait for it, and whether its
    outcome is the workflow's result."""

    step: StepRecord
    dependents: tuple[int, ...] = ()
    final: bool = False


_META = msgspec.json.Decoder(Meta)
_STEP = msgspec.json.Decoder(StepDoc)
_OUTCOME: msgspec.json.Decoder[StepOutcome] = msgspec.json.Decoder(StepOutcome)  # type: ignore[arg-type]
_ENCODE = msgspec.json.Encoder()


class WorkflowStore:
    """Reads and writes the documents of running workflows in one sink."""

    def __init__(self, sink: DataSink, ttl: float | None) -> None:
        self.sink = sink
        self.ttl = ttl
        self._cache: OrderedDict[tuple[str, int], StepDoc] = OrderedDict()

    @staticmethod
    def meta_id(workflow: str) -> str:
        """The id of a workflow's :class:`Meta` document."""
        return f"wf:{workflow}"

    @staticmethod
    def step_id(workflow: str, step: int) -> str:
        """The id of step ``step``'s :class:`StepDoc`."""
        return f"wf:{workflow}:s:{step}"

    @staticmethod
    def outcome_id(workflow: str, step: int) -> str:
        """The id of step ``step``'s outcome document."""
        return f"wf:{workflow}:o:{step}"

    async def save(self, graph: Graph, skip: Collection[int] = ()) -> None:
        """Store a new workflow: its meta document and one document per step (but
        the steps in ``skip``, whose messages carry what the router needs)."""
        dependents = graph.dependents()
        wf = graph.id
        docs = [
            StoredDocument(
                self.meta_id(wf),
                "WORKFLOW",
                _ENCODE.encode(Meta(graph.workflow, graph.errbacks)),
            )
        ]
        for step in graph.steps:
            if step.id in skip:
                continue
            final = step.id == graph.workflow.final
            body = _ENCODE.encode(StepDoc(step, tuple(dependents[step.id]), final))
            docs.append(StoredDocument(self.step_id(wf, step.id), "STEP", body))
        batches = [docs[start : start + _BATCH] for start in range(0, len(docs), _BATCH)]
        if len(batches) == 1:
            await self.sink.store(batches[0], self.ttl)
            return
        limiter = anyio.CapacityLimiter(_WRITERS)  # a big canvas: a few writes at once

        async def store(batch: list[StoredDocument]) -> None:
            async with limiter:
                await self.sink.store(batch, self.ttl)

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(store, batch)

    async def meta(self, workflow: str) -> Meta | None:
        """The workflow's meta document, if it is (still) stored."""
        found = await self.sink.get([self.meta_id(workflow)])
        doc = found.get(self.meta_id(workflow))
        return _META.decode(doc.body) if doc is not None else None

    async def steps(self, workflow: str, ids: Iterable[int]) -> dict[int, StepDoc]:
        """The stored steps among ``ids`` (missing ones: the workflow expired).

        Step records never change once stored, so the last ones read are kept here:
        a join read for every batch of its members is read from the store once.
        """
        out: dict[int, StepDoc] = {}
        wanted: dict[str, int] = {}
        for n in ids:
            cached = self._cache.get((workflow, n))
            if cached is not None:
                self._cache.move_to_end((workflow, n))
                out[n] = cached
            else:
                wanted[self.step_id(workflow, n)] = n
        if wanted:
            found = await self.sink.get(list(wanted))
            for key, doc in found.items():
                n = wanted[key]
                out[n] = self._cache[(workflow, n)] = _STEP.decode(doc.body)
            while len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        return out

    async def outcomes(self, workflow: str, ids: Iterable[int]) -> dict[int, StepOutcome]:
        """The outcomes among ``ids`` that are stored."""
        wanted = {self.outcome_id(workflow, n): n for n in ids}
        if not wanted:
            return {}
        found = await self.sink.get(list(wanted))
        return {wanted[key]: _OUTCOME.decode(doc.body) for key, doc in found.items()}

    async def settle(self, done: Sequence[tuple[str, int, StepOutcome]]) -> None:
        """Store these steps' outcomes (rewriting one is harmless: outcomes are final)."""
        docs = self.outcome_documents(done)
        if docs:
            await self.sink.store(docs, self.ttl)

    def outcome_documents(
        self, done: Sequence[tuple[str, int, StepOutcome]]
    ) -> list[StoredDocument]:
        """The documents :meth:`settle` stores, for a caller that stores them itself."""
        return [
            StoredDocument(self.outcome_id(wf, n), _state(outcome), _ENCODE.encode(outcome))
            for wf, n, outcome in done
        ]


def decode_outcome(body: bytes) -> StepOutcome:
    """A stored outcome document's body, decoded."""
    return _OUTCOME.decode(body)


def _state(outcome: Any) -> str:
    return type(outcome).__name__.upper()
