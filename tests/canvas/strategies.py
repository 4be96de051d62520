"""Hypothesis strategies: random nested canvases over a small set of tasks.

:data:`TASKS` are plain functions (importable, so worker processes can register the
same ones). They accept any number of arguments, since a chain prepends whatever
came before, and their results show what they were given:

- ``t.add``: the sum of every number in the arguments, lists included;
- ``t.echo``: the list of its arguments (shows order and nesting);
- ``t.odd``: like ``t.add``, but raises ``ValueError`` when the sum is odd;
- ``t.fail``: always raises ``ValueError``;
- ``t.record``: an error callback; returns its arguments' count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from celeriac.canvas import (
    Canvas,
    Chunks,
    Map,
    Signature,
    Starmap,
    chain,
    chord,
    group,
)


def total(value: Any) -> int:
    """The sum of every integer in ``value`` (nested lists included)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return sum(total(item) for item in value)
    if isinstance(value, dict):
        return sum(total(item) for item in value.values())
    return 0


def add(*args: Any, **kwargs: Any) -> int:
    return total(args) + total(kwargs)


def echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [*args, kwargs] if kwargs else list(args)


def odd(*args: Any) -> int:
    value = total(args)
    if value % 2:
        raise ValueError(f"odd: {value}")
    return value


def fail(*args: Any) -> Any:
    raise ValueError(f"fail: {total(args)}")


def record(*args: Any) -> int:
    return len(args)


TASKS: dict[str, Callable[..., Any]] = {
    "t.add": add,
    "t.echo": echo,
    "t.odd": odd,
    "t.fail": fail,
    "t.record": record,
}

# Failing tasks are drawn less often, so most canvases get deep before they fail.
NAMES = st.sampled_from(["t.add", "t.add", "t.echo", "t.echo", "t.odd", "t.fail"])
NUMBERS = st.integers(min_value=0, max_value=9)
ARGS = st.lists(NUMBERS, max_size=2).map(tuple)
ERRBACKS = st.sampled_from(
    [
        Signature("t.record"),
        Signature("t.record", args=(1,)),
        Signature("t.record", args=("x",), immutable=True),
        Signature("t.fail"),  # a callback that fails changes nothing
    ]
)


def _with_errbacks(node: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def attach(pair: tuple[Any, list[Signature]]) -> Any:
        canvas, errbacks = pair
        for errback in errbacks:
            canvas = canvas.on_error(errback)
        return canvas

    # Mostly none: callbacks on every level would make every failure call many.
    errbacks: st.SearchStrategy[list[Signature]] = st.just([]) | st.lists(ERRBACKS, max_size=2)
    return st.tuples(node, errbacks).map(attach)


signatures: st.SearchStrategy[Signature] = _with_errbacks(
    st.builds(Signature, NAMES, args=ARGS, immutable=st.booleans())
)

ITEMS = st.lists(NUMBERS, max_size=4)
PAIRS = st.lists(st.lists(NUMBERS, max_size=2), max_size=5)

headers: st.SearchStrategy[Any] = st.one_of(
    st.builds(Map, NAMES, items=ITEMS),
    st.builds(Starmap, NAMES, items=PAIRS),
    st.builds(Chunks, NAMES, items=PAIRS, size=st.integers(min_value=1, max_value=3)),
)


def _composites(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    members = st.lists(inner, min_size=1, max_size=3)
    groups = st.lists(inner, max_size=3).map(group)
    return _with_errbacks(
        st.one_of(
            members.map(lambda tasks: chain(*tasks)),
            groups,
            st.builds(chord, groups | headers, inner),
        )
    )


canvases: st.SearchStrategy[Canvas] = st.recursive(
    signatures | _with_errbacks(headers), _composites, max_leaves=8
)
"""Any canvas: signatures, maps, starmaps and chunks nested in chains, groups, chords."""
