"""Canvas primitives: chain, group, chord, map, starmap, chunks — nested freely.

Every primitive is a frozen msgspec struct, so a whole canvas is plain data: it
round-trips through JSON (:func:`to_json`, :func:`from_json`) or builtins
(:func:`to_builtins`, :func:`from_builtins`) as a tagged union on ``"type"``.

Results (the same locally and on workers; see docs/canvas.md):

- ``chain(a, b, c)``: ``c(b(a()))``; each step gets the previous result as its first
  argument unless it is immutable. A failed step stops the chain.
- ``group(a, b)``: ``[a(), b()]`` in member order; every member runs, and if any
  fails the group fails with :class:`~celeriac.canvas.errors.GroupFailed`.
- ``chord(header, body)``: ``body([results of header])``; the body does not run if
  a header member failed. ``chain(group, body)`` means exactly the same.
- ``task.map(items)``: ``[task(i) for i in items]``, one step per item;
  ``task.starmap(items)``: ``[task(*i) for i in items]``; ``task.chunks(items, n)``:
  the starmap cut into steps of ``n`` calls each, a list of lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import msgspec

from celeriac.canvas.errors import InvalidCanvas
from celeriac.canvas.signature import CanvasNode, Signature, WithOptions

__all__ = [
    "CANVAS_TYPES",
    "Canvas",
    "Chain",
    "Chord",
    "Chunks",
    "Group",
    "Header",
    "Map",
    "Starmap",
    "chain",
    "chord",
    "from_builtins",
    "from_json",
    "group",
    "task_count",
    "to_builtins",
    "to_json",
]


class Chain(CanvasNode, frozen=True, tag="chain"):
    """Run ``tasks`` one after the other, each fed the previous one's result."""

    tasks: tuple[Canvas, ...]

    def __post_init__(self) -> None:
        _set(self, "tasks", tuple(_check_canvas(task) for task in self.tasks))
        if not self.tasks:
            raise InvalidCanvas("a chain needs at least one task")
        super().__post_init__()


class Group(CanvasNode, frozen=True, tag="group"):
    """Run ``tasks`` side by side; the result is the list of their results, in order.

    An empty group is allowed: its result is ``[]``.
    """

    tasks: tuple[Canvas, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "tasks", tuple(_check_canvas(task) for task in self.tasks))
        super().__post_init__()


class Map(WithOptions, frozen=True, tag="map"):
    """``[task(item) for item in items]``: one step per item."""

    task: str
    items: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        _check_task(self.task)
        _set(self, "items", tuple(self.items))
        super().__post_init__()


class Starmap(WithOptions, frozen=True, tag="starmap"):
    """``[task(*item) for item in items]``: one step per item; items are sequences."""

    task: str
    items: tuple[tuple[Any, ...], ...] = ()

    def __post_init__(self) -> None:
        _check_task(self.task)
        _set(self, "items", _argument_lists(self.items))
        super().__post_init__()


class Chunks(WithOptions, frozen=True, tag="chunks"):
    """A starmap of ``items`` cut into steps of ``size`` calls each.

    The result is a list of lists: one list of results per chunk.
    """

    task: str
    items: tuple[tuple[Any, ...], ...]
    size: int

    def __post_init__(self) -> None:
        _check_task(self.task)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InvalidCanvas(f"chunk size must be a positive integer, not {self.size!r}")
        _set(self, "items", _argument_lists(self.items))
        super().__post_init__()

    def chunked(self) -> list[tuple[tuple[Any, ...], ...]]:
        """The items of each chunk, in order."""
        n = self.size
        return [self.items[i : i + n] for i in range(0, len(self.items), n)]


Header: TypeAlias = Group | Map | Starmap | Chunks


class Chord(CanvasNode, frozen=True, tag="chord"):
    """Run ``header``, then ``body`` with the list of the header's results."""

    header: Header
    body: Canvas

    def __post_init__(self) -> None:
        if not isinstance(self.header, Group | Map | Starmap | Chunks):
            raise InvalidCanvas("a chord's header is a group, map, starmap or chunks")
        _check_canvas(self.body)
        super().__post_init__()


Canvas: TypeAlias = Signature | Chain | Group | Chord | Map | Starmap | Chunks

CANVAS_TYPES: tuple[type[CanvasNode], ...] = (Signature, Chain, Group, Chord, Map, Starmap, Chunks)


def chain(*tasks: Canvas) -> Chain:
    """``chain(a, b, c)``: run ``a``, then ``b`` with ``a``'s result first, then ``c``."""
    return Chain(tasks)


def group(*tasks: Canvas | Iterable[Canvas]) -> Group:
    """``group(a, b)`` or ``group(sig for ...)``: run side by side, results in order."""
    members: Iterable[Any] = tasks
    first: Any = tasks[0] if len(tasks) == 1 else None
    if first is not None and not isinstance(first, CANVAS_TYPES):
        members = first
    return Group(tuple(members))


def chord(header: Header | Iterable[Canvas], body: Canvas) -> Chord:
    """``chord(header, body)``: ``body`` gets the list of ``header``'s results.

    ``header`` is a group, map, starmap or chunks, or an iterable of canvases (made a
    group).
    """
    if not isinstance(header, Group | Map | Starmap | Chunks):
        header = group(header)
    return Chord(header, body)


def task_count(canvas: Canvas) -> int:
    """How many task steps ``canvas`` has: one per message a worker will run."""
    if isinstance(canvas, Signature):
        return 1
    if isinstance(canvas, Chain | Group):
        return sum(task_count(task) for task in canvas.tasks)
    if isinstance(canvas, Chord):
        return task_count(canvas.header) + task_count(canvas.body)
    if isinstance(canvas, Chunks):
        return -(-len(canvas.items) // canvas.size)
    return len(canvas.items)


def to_builtins(canvas: Canvas) -> dict[str, Any]:
    """``canvas`` as JSON-able builtins (dicts tagged with ``"type"``, lists, scalars)."""
    data: dict[str, Any] = msgspec.to_builtins(canvas)
    return data


def from_builtins(data: Any) -> Canvas:
    """The canvas that :func:`to_builtins` made ``data`` from; validates as it goes."""
    canvas: Canvas = msgspec.convert(data, Canvas)
    return canvas


def to_json(canvas: Canvas) -> bytes:
    """``canvas`` as JSON."""
    return msgspec.json.encode(canvas)


def from_json(data: bytes | str) -> Canvas:
    """The canvas encoded in ``data`` (JSON); validates as it goes."""
    canvas: Canvas = msgspec.json.decode(data, type=Canvas)
    return canvas


def _check_task(task: object) -> None:
    if not isinstance(task, str) or not task:
        raise InvalidCanvas("a task name must be a non-empty string")


def _argument_lists(items: Iterable[object]) -> tuple[tuple[Any, ...], ...]:
    lists = []
    for item in items:
        if not isinstance(item, list | tuple):
            raise InvalidCanvas(f"starmap and chunks items are argument lists, not {item!r}")
        lists.append(tuple(item))
    return tuple(lists)


def _set(struct: msgspec.Struct, name: str, value: object) -> None:
    # Normalise a frozen struct while it is being built (lists given for tuples), so
    # a canvas equals its own round trip through JSON.
    msgspec.structs.force_setattr(struct, name, value)


def _check_canvas(task: object) -> Any:
    if not isinstance(task, CANVAS_TYPES):
        raise InvalidCanvas(f"not a canvas: {task!r} (use task.s(...) for a call)")
    return task
