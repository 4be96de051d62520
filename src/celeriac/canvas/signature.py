"""Signatures: one call of a task, by name, as data.

A :class:`Signature` is a task name with arguments, options and error callbacks. It
holds no function and no app: a process that has none of the task's code builds one
with ``Signature("shop.add", args=(1, 2))``, and it travels as JSON (a tagged map,
``{"type": "signature", "task": "shop.add", "args": [1, 2]}``).

Every canvas (signatures, chains, groups, chords, maps, starmaps, chunks) derives from
:class:`CanvasNode`, which gives ``a | b`` (a chain) and ``on_error``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

import msgspec

from celeriac.canvas.errors import InvalidCanvas

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.canvas.primitives import Canvas, Chain
    from celeriac.tasks.result import Result

__all__ = [
    "CanvasNode",
    "Options",
    "Signature",
    "WithOptions",
    "bind",
    "bound_app",
    "identity",
    "merge_options",
]


class Options(msgspec.Struct, frozen=True, omit_defaults=True, repr_omit_defaults=True):
    """How one step is published. ``None`` leaves the task's own option in place.

    ``countdown`` delays the step by that many seconds after it becomes ready (its
    inputs are done); ``expires`` drops it if it has not started that many seconds
    after it was published; ``priority`` is 0-9, higher first; ``headers`` are added
    to its message.
    """

    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    expires: float | None = None
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.priority is not None and not 0 <= self.priority <= 9:
            raise InvalidCanvas(f"priority must be between 0 and 9, not {self.priority}")
        if self.countdown is not None and self.countdown < 0:
            raise InvalidCanvas(f"countdown must not be negative, not {self.countdown}")
        if self.expires is not None and self.expires <= 0:
            raise InvalidCanvas(f"expires must be positive, not {self.expires}")
        if self.queue == "":
            raise InvalidCanvas("queue must not be empty")


NO_OPTIONS = Options()


class CanvasNode(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    repr_omit_defaults=True,
    tag_field="type",
    dict=True,  # room for the app a task's .s() was made by: never encoded or compared
):
    """The base of every canvas: error callbacks, ``|`` and :meth:`on_error`.

    ``errbacks`` are called once for each task of this canvas that fails, as
    ``errback(failed_task_id, error, *args, **kwargs)`` (``error`` is the failed
    task's error as a dict: ``type``, ``module``, ``message``, ``traceback``,
    ``args``), or with its own arguments only when the callback is immutable.
    """

    errbacks: tuple[Signature, ...] = ()

    def on_error(self, errback: Signature) -> Self:
        """A copy with ``errback`` added to this canvas's error callbacks."""
        if not isinstance(errback, Signature):
            raise InvalidCanvas(f"an error callback is a Signature, not {type(errback).__name__}")
        if errback.errbacks:
            raise InvalidCanvas("an error callback cannot have error callbacks of its own")
        return msgspec.structs.replace(self, errbacks=(*self.errbacks, errback))

    def __or__(self, other: Canvas) -> Chain:
        """``a | b``: a chain; ``b`` gets ``a``'s result first unless it is immutable."""
        from celeriac.canvas.primitives import CANVAS_TYPES, Chain

        if not isinstance(other, CANVAS_TYPES):
            return NotImplemented
        if isinstance(self, Chain) and not self.errbacks:
            return Chain((*self.tasks, other))
        mine: Canvas = self  # type: ignore[assignment]
        return Chain((mine, other))

    def delay(self) -> Result[Any]:
        """Start this canvas on the app its tasks' signatures came from (``task.s()``);
        its :class:`~celeriac.tasks.result.Result` is the whole canvas's.

        Same as ``app.start(canvas)``, which also works for canvases built by name
        (``Signature("shop.add", ...)``), which know no app.
        """
        return self._app().start(self)  # type: ignore[arg-type]

    async def delay_async(self) -> Result[Any]:
        """:meth:`delay`, awaited until the canvas is stored and its first steps are sent."""
        return await self._app().start_async(self)  # type: ignore[arg-type]

    def _app(self) -> App:
        app = bound_app(self)
        if app is None:
            raise InvalidCanvas(
                "this canvas knows no app (it was built by name): use app.start(canvas)"
            )
        return app

    def __post_init__(self) -> None:
        if not isinstance(self.errbacks, tuple):
            msgspec.structs.force_setattr(self, "errbacks", tuple(self.errbacks))
        for errback in self.errbacks:
            if not isinstance(errback, Signature):
                raise InvalidCanvas("an error callback is a Signature")
            if errback.errbacks:
                raise InvalidCanvas("an error callback cannot have error callbacks of its own")


class WithOptions(CanvasNode, frozen=True, kw_only=True):
    """A canvas that publishes calls of one task: it has :class:`Options`."""

    options: Options = NO_OPTIONS

    def set(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Self:
        """A copy with these options changed (``None``: unchanged; headers are added)."""
        options = merge_options(
            self.options,
            queue=queue,
            priority=priority,
            countdown=countdown,
            expires=expires,
            headers=headers,
        )
        return msgspec.structs.replace(self, options=options)


class Signature(WithOptions, frozen=True, tag="signature"):
    """One call of task ``task`` (a name) with ``args`` and ``kwargs``.

    In a chain, the previous step's result is prepended to ``args`` unless the
    signature is ``immutable`` (``task.si(...)``). Build one with ``task.s(...)``,
    ``task.si(...)``, or by name: ``Signature("shop.add", args=(1, 2))``. Options
    are keyword-only: ``Signature("shop.add", options=Options(queue="cpu"))``, or
    ``sig.set(queue="cpu")``.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    immutable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise InvalidCanvas("a signature needs a task name")
        if not isinstance(self.args, tuple):
            # Accept a list for args; keep a tuple, so a signature equals its round trip.
            msgspec.structs.force_setattr(self, "args", tuple(self.args))
        super().__post_init__()

    def frozen(self) -> Signature:
        """An immutable copy: in a chain it ignores the previous step's result."""
        return msgspec.structs.replace(self, immutable=True)


def bind(node: CanvasNode, app: App) -> None:
    """Remember that ``node`` was made by ``app`` (a task's ``.s()``), for :meth:`delay`."""
    node.__dict__["_celeriac_app"] = app


def bound_app(node: CanvasNode) -> App | None:
    """The app of the first signature in ``node`` made by a task, depth first."""
    todo: list[Any] = [node]
    while todo:
        current = todo.pop()
        app = current.__dict__.get("_celeriac_app")
        if app is not None:
            return app  # type: ignore[no-any-return]
        todo += reversed(list(_children(current)))
    return None


def _children(node: Any) -> Iterator[Any]:
    for name in ("tasks", "header", "body"):
        value = getattr(node, name, None)
        if isinstance(value, tuple):
            yield from value
        elif value is not None and hasattr(value, "__dict__"):
            yield value


def merge_options(
    options: Options,
    *,
    queue: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    expires: float | None = None,
    headers: dict[str, str] | None = None,
) -> Options:
    """``options`` with the given fields changed (``None``: unchanged; headers are added)."""
    return Options(
        queue=options.queue if queue is None else queue,
        priority=options.priority if priority is None else priority,
        countdown=options.countdown if countdown is None else countdown,
        expires=options.expires if expires is None else expires,
        headers=options.headers if headers is None else {**options.headers, **headers},
    )


def identity(signature: Signature) -> bytes:
    """A key equal for equal signatures, whatever the order of their dicts: error
    callbacks are deduplicated by it."""
    return msgspec.json.encode(signature, order="deterministic")
