"""Signatures and primitives: building them, and their JSON form."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from tests.canvas.strategies import canvases

from celeriac import App
from celeriac.canvas import (
    Chain,
    Chord,
    Chunks,
    Group,
    InvalidCanvas,
    Map,
    Options,
    Signature,
    Starmap,
    chain,
    chord,
    from_builtins,
    from_json,
    group,
    to_builtins,
    to_json,
)
from celeriac.canvas.primitives import task_count


@pytest.fixture
def app() -> App:
    return App("shop", broker="memory://")


def test_task_s_is_a_call_by_name_with_its_arguments(app: App) -> None:
    @app.task(name="shop.add")
    def add(a: int, b: int) -> int:
        return a + b

    assert add.s(1, b=2) == Signature("shop.add", args=(1,), kwargs={"b": 2})
    assert add.si(1, 2) == Signature("shop.add", args=(1, 2), immutable=True)
    assert add.s(1).frozen() == Signature("shop.add", args=(1,), immutable=True)


def test_task_map_starmap_chunks_keep_every_item(app: App) -> None:
    @app.task(name="shop.add")
    def add(a: int, b: int) -> int:
        return a + b

    assert add.map([[1, 2], [3, 4]]) == Map("shop.add", items=([1, 2], [3, 4]))
    assert add.starmap([[1, 2], (3, 4)]) == Starmap("shop.add", items=((1, 2), (3, 4)))
    chunks = add.chunks([(i, i) for i in range(5)], 2)
    assert chunks == Chunks("shop.add", items=tuple((i, i) for i in range(5)), size=2)
    assert chunks.chunked() == [((0, 0), (1, 1)), ((2, 2), (3, 3)), ((4, 4),)]
    assert task_count(chunks) == 3


def test_a_signature_by_name_is_plain_json() -> None:
    sig = Signature("shop.add", args=(1, 2)).set(queue="cpu", priority=7)
    data = json.loads(to_json(sig))
    assert data == {
        "type": "signature",
        "task": "shop.add",
        "args": [1, 2],
        "options": {"queue": "cpu", "priority": 7},
    }
    # A program with no celeriac code writes the same map, and it reads back.
    assert from_json(json.dumps(data)) == sig
    assert from_builtins({"type": "signature", "task": "shop.add"}) == Signature("shop.add")


def test_pipe_builds_one_flat_chain() -> None:
    a, b, c = Signature("a"), Signature("b"), Signature("c")
    assert a | b | c == Chain((a, b, c))
    assert chain(a, b) | c == Chain((a, b, c))
    assert group(a, b) | c == Chain((Group((a, b)), c))


def test_pipe_keeps_a_chains_error_callbacks_to_its_own_members() -> None:
    a, b, c, e = Signature("a"), Signature("b"), Signature("c"), Signature("e")
    scoped = chain(a, b).on_error(e)
    assert scoped | c == Chain((scoped, c))


def test_on_error_adds_callbacks_in_order() -> None:
    e1, e2 = Signature("e1"), Signature("e2", immutable=True)
    sig = Signature("a").on_error(e1).on_error(e2)
    assert sig.errbacks == (e1, e2)
    assert group(sig).on_error(e1).errbacks == (e1,)


def test_an_error_callback_is_a_plain_signature() -> None:
    nested = Signature("e").on_error(Signature("f"))
    with pytest.raises(InvalidCanvas, match="error callbacks of its own"):
        Signature("a").on_error(nested)
    with pytest.raises(InvalidCanvas, match="is a Signature"):
        Signature("a").on_error(group(Signature("e")))  # type: ignore[arg-type]


def test_set_changes_only_the_options_given() -> None:
    sig = Signature("a", args=(1,)).set(queue="q", headers={"x": "1"})
    changed = sig.set(priority=3, headers={"y": "2"})
    assert changed.options == Options(queue="q", priority=3, headers={"x": "1", "y": "2"})
    assert changed.args == (1,)
    assert Map("m", items=(1,)).set(countdown=5).options == Options(countdown=5)


@pytest.mark.parametrize(
    "options",
    [{"priority": 10}, {"priority": -1}, {"countdown": -1}, {"expires": 0}, {"queue": ""}],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(InvalidCanvas):
        Signature("a").set(**options)  # type: ignore[arg-type]


def test_bad_canvases_are_rejected_when_built() -> None:
    with pytest.raises(InvalidCanvas, match="task name"):
        Signature("")
    with pytest.raises(InvalidCanvas, match="at least one task"):
        chain()
    with pytest.raises(InvalidCanvas, match="chunk size"):
        Chunks("a", items=((1,),), size=0)
    with pytest.raises(InvalidCanvas, match="argument lists"):
        Starmap("a", items=(1,))  # type: ignore[arg-type]
    with pytest.raises(InvalidCanvas, match="not a canvas"):
        group([lambda: 1])  # type: ignore[list-item]
    with pytest.raises(InvalidCanvas, match="header"):
        Chord(Signature("a"), Signature("b"))  # type: ignore[arg-type]


def test_invalid_json_is_rejected_while_decoding() -> None:
    for bad in (
        b'{"type": "chunks", "task": "a", "items": [[1]], "size": 0}',
        b'{"type": "signature", "task": ""}',
        b'{"type": "chain", "tasks": []}',
        b'{"type": "signature", "task": "a", "options": {"priority": 12}}',
        b'{"type": "spell", "task": "a"}',
    ):
        with pytest.raises(msgspec.ValidationError):
            from_json(bad)


def test_chord_accepts_a_header_of_any_group_like_canvas() -> None:
    body = Signature("sum")
    assert chord([Signature("a"), Signature("b")], body).header == group(
        Signature("a"), Signature("b")
    )
    assert chord(Map("a", items=(1, 2)), body).header == Map("a", items=(1, 2))
    assert group(Signature("a") for _ in range(3)) == Group((Signature("a"),) * 3)


@given(canvases)
def test_every_canvas_survives_a_json_round_trip(canvas: object) -> None:
    assert from_json(to_json(canvas)) == canvas  # type: ignore[arg-type]
    data = json.loads(json.dumps(to_builtins(canvas)))  # type: ignore[arg-type]
    assert from_builtins(data) == canvas
