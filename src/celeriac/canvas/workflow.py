"""Workflows: named, declarative, immutable graphs of steps (CEP "Workflows").

A canvas is built at run time, by code; a :class:`Workflow` is declared once,
validated once, and started many times with different parameters::

    checkout = Workflow(
        "shop.checkout",
        params=("order_id", "email"),
        steps=(
            Step("reserve", reserve.s(), bind={"order_id": "order_id"}),
            Step("price", price.s(), bind={"order_id": "order_id"}),
            Step("charge", charge.s(), after=("reserve", "price")),  # charge([reserved, price])
            Step("receipt", send_receipt.si(), after=("charge",), bind={"to": "email"}),
        ),
        output="charge",
    )
    checkout.check_tasks(app.tasks)
    graph = checkout.instantiate({"order_id": 7, "email": "a@b.c"})

A step is a signature plus the steps it waits for (``after``): with one, that step's
result is prepended to its arguments; with several, the list of their results, in
``after`` order; with an immutable signature, none. ``bind`` maps keyword arguments to
the workflow's parameters. Building a workflow (or decoding one) checks it: every
problem found is named in one :class:`~celeriac.canvas.errors.InvalidWorkflow`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from celeriac.canvas.errors import InvalidWorkflow
from celeriac.canvas.graph import Combine, ErrbackTable, Graph, StepRecord, WorkflowRecord
from celeriac.canvas.signature import Signature
from celeriac.messages import new_id

__all__ = ["Step", "Workflow"]


class Step(msgspec.Struct, frozen=True, omit_defaults=True):
    """One named step: ``signature``, the steps it waits for, its bound parameters.

    ``after`` names the steps whose results it receives (see the module docstring);
    ``bind`` maps a keyword argument of the call to a workflow parameter.
    """

    name: str
    signature: Signature
    after: tuple[str, ...] = ()
    bind: dict[str, str] = {}


class Workflow(msgspec.Struct, frozen=True, omit_defaults=True):
    """A named, validated, immutable graph of :class:`Step`; start it with
    :meth:`instantiate`.

    ``params`` are the names a run must be given; ``output`` the step whose result
    is the run's result (by default, the one step nothing waits for); ``on_error``
    error callbacks for every step.
    """

    name: str
    steps: tuple[Step, ...]
    params: tuple[str, ...] = ()
    output: str | None = None
    on_error: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise InvalidWorkflow(f"workflow {self.name!r}: " + "; ".join(problems))

    @property
    def result_step(self) -> str:
        """The name of the step whose result is the run's result."""
        if self.output is not None:
            return self.output
        return _sinks(self)[0]

    def task_names(self) -> set[str]:
        """Every task name the workflow calls, error callbacks included."""
        names = {errback.task for errback in self.on_error}
        for step in self.steps:
            names.add(step.signature.task)
            names.update(errback.task for errback in step.signature.errbacks)
        return names

    def check_tasks(self, known: Iterable[str]) -> None:
        """Raise :class:`InvalidWorkflow` if a task name is not in ``known``.

        ``known`` is any iterable of names: ``app.tasks`` will do.
        """
        known = set(known)
        unknown = []
        for step in self.steps:
            for sig in (step.signature, *step.signature.errbacks):
                if sig.task not in known:
                    unknown.append(f"{sig.task!r} (step {step.name!r})")
        unknown += [f"{sig.task!r} (on_error)" for sig in self.on_error if sig.task not in known]
        if unknown:
            raise InvalidWorkflow(f"workflow {self.name!r}: unknown tasks: " + ", ".join(unknown))

    def instantiate(
        self, params: Mapping[str, Any] | None = None, *, workflow_id: str | None = None
    ) -> Graph:
        """The normal form of one run with ``params``: what the router stores.

        Steps get ids in declaration order. Raises :class:`InvalidWorkflow` if a
        parameter is missing or unknown.
        """
        given = dict(params or {})
        missing = [name for name in self.params if name not in given]
        extra = sorted(set(given) - set(self.params))
        problems = []
        if missing:
            problems.append("missing parameters: " + ", ".join(missing))
        if extra:
            problems.append("unknown parameters: " + ", ".join(extra))
        if problems:
            raise InvalidWorkflow(f"workflow {self.name!r}: " + "; ".join(problems))
        ids = {step.name: index for index, step in enumerate(self.steps)}
        table = ErrbackTable()
        shared = table.scope(self.on_error)
        records = []
        for index, step in enumerate(self.steps):
            sig = step.signature
            combine: Combine = "none"
            if not sig.immutable and step.after:
                combine = "prepend" if len(step.after) == 1 else "list"
            kwargs = {**sig.kwargs, **{arg: given[param] for arg, param in step.bind.items()}}
            records.append(
                StepRecord(
                    id=index,
                    task=sig.task,
                    name=step.name,
                    args=sig.args,
                    kwargs=kwargs,
                    options=sig.options,
                    inputs=tuple(ids[name] for name in step.after),
                    combine=combine,
                    errbacks=table.scope(sig.errbacks, shared),
                )
            )
        record = WorkflowRecord(
            id=workflow_id or new_id(),
            final=ids[self.result_step],
            size=len(records),
            tasks=len(records),
            errbacks=len(table.signatures),
            name=self.name,
        )
        return Graph(record, tuple(records), tuple(table.signatures))


def _problems(workflow: Workflow) -> Iterator[str]:
    if not workflow.name:
        yield "a workflow needs a name"
    if not workflow.steps:
        yield "a workflow needs at least one step"
        return
    yield from _repeated("parameter", workflow.params)
    names = [step.name for step in workflow.steps]
    yield from _repeated("step", names)
    known = set(names)
    params = set(workflow.params)
    for step in workflow.steps:
        if not step.name:
            yield "a step needs a name"
        if isinstance(step.after, str):
            yield f"step {step.name!r}: after= is a list of step names, not a string"
            continue
        yield from _repeated(f"step {step.name!r} waits for", step.after)
        for name in step.after:
            if name not in known:
                yield f"step {step.name!r} waits for {name!r}, which is not a step"
        for arg, param in step.bind.items():
            if param not in params:
                yield f"step {step.name!r} binds {arg!r} to {param!r}, which is not a parameter"
            if arg in step.signature.kwargs:
                yield f"step {step.name!r} binds {arg!r}, which its signature already sets"
    cycle = _cycle(workflow)
    if cycle:
        yield "cycle: " + " -> ".join(cycle)
    if workflow.output is not None:
        if workflow.output not in known:
            yield f"output {workflow.output!r} is not a step"
    elif not cycle and len(_sinks(workflow)) > 1:
        sinks = ", ".join(_sinks(workflow))
        yield f"several steps end the workflow ({sinks}): name the result with output="


def _repeated(what: str, names: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            yield f"{what} {name!r} appears more than once"
        seen.add(name)


def _sinks(workflow: Workflow) -> list[str]:
    needed = {name for step in workflow.steps for name in step.after}
    return [step.name for step in workflow.steps if step.name not in needed]


def _cycle(workflow: Workflow) -> list[str]:
    """A cycle of step names (first name repeated at the end), or ``[]``."""
    after = {step.name: [n for n in step.after if isinstance(n, str)] for step in workflow.steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str]:
        state[name] = 1
        path.append(name)
        for source in after.get(name, ()):
            if state.get(source) == 1:
                return [*path[path.index(source) :], source]
            if source in after and source not in state:
                found = visit(source, path)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return []

    for name in after:
        if name not in state:
            found = visit(name, [])
            if found:
                return found
    return []
