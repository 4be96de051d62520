"""Supervisors: restart strategies and policies, intensity, boot steps, dependencies."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tests.actors.actor_helpers import Boom, eventually, recorder

from celeriac.actors import (
    ActorRef,
    ActorSystem,
    Backoff,
    ChildSpec,
    Restart,
    StartChild,
    State,
    StopChild,
    Strategy,
    Supervisor,
    actor_system,
)
from celeriac.errors import ActorError, BootError, ConfigurationError

pytestmark = pytest.mark.anyio

Events = list[tuple[str, str]]


def specs(events: Events, *names: str, **options: Any) -> list[ChildSpec]:
    return [ChildSpec(name, recorder(events), **options) for name in names]


async def crash(system: ActorSystem, name: str) -> None:
    """Crash a child and wait until its supervisor has started it again."""
    ref = system.lookup(name)
    before = ref.restarts
    await ref.tell("crash")
    await eventually(lambda: ref.restarts > before and ref.state is State.STARTED)


@pytest.mark.parametrize(
    ("strategy", "after_crash"),
    [
        (Strategy.ONE_FOR_ONE, ["stop b", "start b"]),
        (Strategy.ONE_FOR_ALL, ["stop b", "stop c", "stop a", "start a", "start b", "start c"]),
        (Strategy.REST_FOR_ONE, ["stop b", "stop c", "start b", "start c"]),
    ],
)
async def test_a_crash_restarts_the_children_the_strategy_names(
    strategy: Strategy, after_crash: list[str]
) -> None:
    events: Events = []
    root = Supervisor(specs(events, "a", "b", "c"), strategy=strategy)
    async with actor_system(root) as system:
        del events[:]
        await crash(system, "b")
        await eventually(lambda: all(ref.state is State.STARTED for ref in _children(system)))
        assert [f"{what} {name}" for what, name in events] == after_crash
        restarted = {ref.name for ref in _children(system) if ref.restarts}
        assert restarted == {name for name in "abc" if f"start {name}" in after_crash}


def _children(system: ActorSystem) -> list[ActorRef[Any]]:
    return [system.lookup(name) for name in "abc"]


async def test_exceeding_restart_intensity_crashes_the_supervisor_and_stops_its_children() -> None:
    events: Events = []
    root = Supervisor(specs(events, "a", "b"), max_restarts=2, period=10)
    systems: list[ActorSystem] = []

    async def crash_three_times() -> None:
        async with actor_system(root) as system:
            systems.append(system)
            await crash(system, "b")
            await crash(system, "b")
            await system.lookup("b").tell("crash")
            await anyio.sleep_forever()  # cancelled: the root crashed

    with pytest.raises(ActorError, match="gave up after more than 2 restarts") as info:
        await crash_three_times()
    system = systems[0]
    assert isinstance(info.value.__cause__, ActorError)
    assert isinstance(info.value.__cause__.__cause__, Boom)
    assert events[-2:] == [("stop", "b"), ("stop", "a")]
    assert system.lookup("a").state is State.STOPPED
    assert system.root.state is State.CRASHED


async def test_a_supervisor_that_gives_up_escalates_to_its_parent() -> None:
    events: Events = []
    inner = ChildSpec("inner", lambda: Supervisor(specs(events, "x", "y"), max_restarts=1))
    root = Supervisor([ChildSpec("before", recorder(events)), inner])
    async with actor_system(root) as system:
        await crash(system, "x")
        del events[:]
        await system.lookup("x").tell("crash")  # the second restart in the period: too many
        inner_ref = system.lookup("inner")
        await eventually(lambda: inner_ref.restarts == 1 and inner_ref.state is State.STARTED)
        assert events == [("stop", "x"), ("stop", "y"), ("start", "x"), ("start", "y")]
        assert "gave up" in str(inner_ref.failure)
        assert system.lookup("before").restarts == 0
        assert system.lookup("x").state is State.STARTED


async def test_a_child_failing_to_start_again_counts_against_the_intensity() -> None:
    events: Events = []
    starts = [0]

    def flaky() -> Any:
        starts[0] += 1
        return recorder(events, fail_starts=int(starts[0] > 1))()

    root = Supervisor([ChildSpec("x", flaky)], max_restarts=3, period=10)

    async def crash_once() -> None:
        async with actor_system(root) as system:
            await system.lookup("x").tell("crash")
            await anyio.sleep_forever()

    with pytest.raises(ActorError, match="gave up"):
        await crash_once()
    assert events.count(("failed", "x")) == 3


async def test_transient_children_restart_only_after_a_crash() -> None:
    events: Events = []
    root = Supervisor(specs(events, "t", restart=Restart.TRANSIENT))
    async with actor_system(root) as system:
        ref = system.lookup("t")
        await crash(system, "t")
        await ref.tell("stop")
        await ref.wait_for(State.STOPPED, timeout=1)
        await anyio.sleep(0.02)
        assert ref.state is State.STOPPED
        assert ref.restarts == 1


async def test_permanent_children_restart_even_after_a_normal_stop() -> None:
    events: Events = []
    root = Supervisor(specs(events, "p"))
    async with actor_system(root) as system:
        ref = system.lookup("p")
        await ref.tell("stop")
        await eventually(lambda: ref.restarts == 1 and ref.state is State.STARTED)


async def test_temporary_children_are_never_restarted_and_are_forgotten() -> None:
    events: Events = []
    root = Supervisor(specs(events, "tmp", restart=Restart.TEMPORARY) + specs(events, "other"))
    async with actor_system(root) as system:
        ref = system.lookup("tmp")
        await ref.tell("crash")
        await ref.wait_for(State.CRASHED, timeout=1)
        await eventually(lambda: "root/tmp" not in system.health())
        assert ref.state is State.CRASHED
        assert ref.restarts == 0
        with pytest.raises(ActorError, match="no actor"):
            system.lookup("tmp")


async def test_one_for_all_does_not_restart_a_temporary_sibling() -> None:
    events: Events = []
    children = specs(events, "a") + specs(events, "tmp", restart=Restart.TEMPORARY)
    root = Supervisor(children, strategy=Strategy.ONE_FOR_ALL)
    async with actor_system(root) as system:
        tmp = system.lookup("tmp")
        await crash(system, "a")
        assert tmp.state is State.STOPPED
        assert "root/tmp" not in system.health()


async def test_backoff_delays_restarts() -> None:
    events: Events = []
    root = Supervisor(specs(events, "x"), backoff=Backoff(initial=0.05, maximum=1.0))
    async with actor_system(root) as system:
        began = anyio.current_time()
        await crash(system, "x")
        assert anyio.current_time() - began >= 0.05


async def test_children_start_in_dependency_order_and_stop_in_reverse() -> None:
    events: Events = []
    root = Supervisor(
        [
            ChildSpec("c", recorder(events), depends_on=("b",)),
            ChildSpec("b", recorder(events), depends_on=("a",)),
            ChildSpec("a", recorder(events)),
            ChildSpec("d", recorder(events)),
        ]
    )
    async with actor_system(root):
        assert [name for _, name in events] == ["a", "b", "c", "d"]
        del events[:]
    assert events == [("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a")]


@pytest.mark.parametrize(
    ("children", "message"),
    [
        ([("a", ("b",)), ("b", ("a",))], "cycle: (a -> b -> a|b -> a -> b)"),
        ([("a", ("a",))], "cycle: a -> a"),
        ([("a", ("ghost",))], "unknown child 'ghost'"),
        ([("a", ()), ("a", ())], "two children are named 'a'"),
    ],
)
def test_a_bad_dependency_graph_is_refused_at_construction(
    children: list[tuple[str, tuple[str, ...]]], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Supervisor([ChildSpec(name, recorder([]), depends_on=deps) for name, deps in children])


def test_a_mandatory_step_cannot_depend_on_an_optional_one() -> None:
    with pytest.raises(ConfigurationError, match="make it optional too"):
        Supervisor(
            [
                ChildSpec("opt", recorder([]), mandatory=False),
                ChildSpec("needs", recorder([]), depends_on=("opt",)),
            ]
        )


async def test_a_failed_mandatory_step_stops_boot_and_its_started_siblings() -> None:
    events: Events = []
    root = Supervisor(
        [
            ChildSpec("a", recorder(events)),
            ChildSpec("b", recorder(events)),
            ChildSpec("c", recorder(events, fail_starts=1)),
            ChildSpec("d", recorder(events)),
        ]
    )
    with pytest.raises(BootError, match=r"boot step 'root/c' failed to start: Boom\(") as info:
        async with actor_system(root):
            pytest.fail("the block must not run")
    assert isinstance(info.value.__cause__, Boom)
    assert events == [
        ("start", "a"),
        ("start", "b"),
        ("failed", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ]


async def test_a_boot_error_deep_in_the_tree_names_the_step_that_failed() -> None:
    events: Events = []
    inner = Supervisor(
        [ChildSpec("x", recorder(events)), ChildSpec("y", recorder(events, fail_starts=1))]
    )
    root = Supervisor([ChildSpec("a", recorder(events)), ChildSpec("inner", lambda: inner)])
    with pytest.raises(BootError, match="'root/inner/y'"):
        async with actor_system(root):
            pass
    assert events == [("start", "a"), ("start", "x"), ("failed", "y"), ("stop", "x"), ("stop", "a")]


async def test_a_failed_optional_step_is_retried_while_the_system_runs() -> None:
    events: Events = []
    root = Supervisor(
        [
            ChildSpec("a", recorder(events)),
            ChildSpec("b", recorder(events, fail_starts=2), mandatory=False, retry_interval=0.05),
            ChildSpec("c", recorder(events), mandatory=False, depends_on=("b",)),
            ChildSpec("d", recorder(events)),
        ]
    )
    async with actor_system(root) as system:
        b, c = system.lookup("b"), system.lookup("c")
        assert events[:3] == [("start", "a"), ("failed", "b"), ("start", "d")]
        assert c.state is State.INITIALIZING  # waits for b
        await c.wait_for(State.STARTED, timeout=1)
        assert events[3:] == [("failed", "b"), ("start", "b"), ("start", "c")]
        assert b.restarts == 2  # three attempts
        del events[:]
    assert events == [("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a")]


async def test_an_optional_step_is_given_up_after_max_attempts() -> None:
    events: Events = []
    flaky = ChildSpec(
        "b", recorder(events, fail_starts=9), mandatory=False, retry_interval=0.01, max_attempts=3
    )
    async with actor_system(Supervisor([flaky])) as system:
        await eventually(lambda: len(events) == 3)
        await anyio.sleep(0.05)
        assert events == [("failed", "b")] * 3
        assert system.lookup("b").state is State.CRASHED
        assert system.root.state is State.STARTED


async def test_children_can_be_added_and_removed_at_run_time() -> None:
    events: Events = []
    async with actor_system(Supervisor(specs(events, "a"))) as system:
        ref = await system.root.ask(StartChild(ChildSpec("b", recorder(events), depends_on=("a",))))
        assert ref is system.lookup("root/b")
        assert system.lookup("b").state is State.STARTED
        with pytest.raises(ActorError, match=r"children depend on it: \['b'\]"):
            await system.root.ask(StopChild("a"))
        with pytest.raises(ConfigurationError, match="two children"):
            await system.root.ask(StartChild(ChildSpec("b", recorder(events))))
        with pytest.raises(BootError, match="'root/bad'"):
            await system.root.ask(StartChild(ChildSpec("bad", recorder(events, fail_starts=1))))
        await system.root.ask(StopChild("b"))
        assert ref.state is State.STOPPED
        assert list(system.health()) == ["root", "root/a"]
    assert events == [
        ("start", "a"),
        ("start", "b"),
        ("failed", "bad"),
        ("stop", "b"),
        ("stop", "a"),
    ]
