"""The actor system: lookup, health, shutdown, and what escapes its block."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from tests.actors.actor_helpers import Boom, eventually, recorder

from celeriac.actors import Actor, ActorStatus, ChildSpec, State, Supervisor, actor_system
from celeriac.errors import ActorError

pytestmark = pytest.mark.anyio

Events = list[tuple[str, str]]


def tree(events: Events) -> Supervisor:
    """root: db, then a worker supervisor (consumer, publisher) that depends on it."""
    worker = ChildSpec(
        "worker",
        lambda: Supervisor(
            [
                ChildSpec("publisher", recorder(events)),
                ChildSpec("consumer", recorder(events), depends_on=("publisher",)),
            ]
        ),
        depends_on=("db",),
    )
    return Supervisor([worker, ChildSpec("db", recorder(events))])


async def test_lookup_finds_actors_by_path_or_unambiguous_name() -> None:
    async with actor_system(tree([])) as system:
        consumer = system.lookup("root/worker/consumer")
        assert consumer.path == "root/worker/consumer"
        assert consumer.name == "consumer"
        assert system.lookup("consumer") is consumer
        assert system.lookup("worker/consumer") is consumer
        assert system.lookup("root") is system.root
        with pytest.raises(ActorError, match="no actor is named 'nobody'"):
            system.lookup("nobody")
        with pytest.raises(ActorError, match="no actor"):
            system.lookup("sumer")


async def test_lookup_refuses_an_ambiguous_name() -> None:
    twins = Supervisor(
        [
            ChildSpec("left", lambda: Supervisor([ChildSpec("x", recorder([]))])),
            ChildSpec("right", lambda: Supervisor([ChildSpec("x", recorder([]))])),
        ]
    )
    async with actor_system(twins) as system:
        with pytest.raises(ActorError, match="ambiguous: root/left/x, root/right/x"):
            system.lookup("x")
        assert system.lookup("left/x").path == "root/left/x"


async def test_health_reports_every_actor() -> None:
    events: Events = []
    async with actor_system(tree(events)) as system:
        await system.lookup("db").tell("crash")
        db = system.lookup("db")
        await eventually(lambda: db.restarts == 1 and db.state is State.STARTED)
        health = system.health()
    assert set(health) == {
        "root",
        "root/db",
        "root/worker",
        "root/worker/publisher",
        "root/worker/consumer",
    }
    assert health["root/db"] == ActorStatus("root/db", State.STARTED, 1, "Boom('db crashed')")
    assert health["root/worker/consumer"] == ActorStatus(
        "root/worker/consumer", State.STARTED, 0, None
    )
    assert all(status.state is State.STOPPED for status in system.health().values())


async def test_shutdown_stops_the_tree_in_reverse_dependency_order() -> None:
    events: Events = []
    async with actor_system(tree(events)) as system:
        assert events == [("start", "db"), ("start", "publisher"), ("start", "consumer")]
        del events[:]
        await system.shutdown()
        assert system.root.state is State.STOPPED
        await system.shutdown()  # again: nothing left to do
    assert events == [("stop", "consumer"), ("stop", "publisher"), ("stop", "db")]


async def test_the_block_is_cancelled_and_an_error_raised_when_the_root_crashes() -> None:
    reached: list[str] = []

    class Fragile(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            raise Boom("root failed")

    async def crash_the_root() -> None:
        async with actor_system(Fragile()) as system:
            await system.root.tell("anything")
            try:
                await anyio.sleep_forever()
            finally:
                reached.append("cancelled")

    with pytest.raises(ActorError, match="the root actor 'root' crashed: Boom") as info:
        await crash_the_root()
    assert reached == ["cancelled"]
    assert isinstance(info.value.__cause__, Boom)


async def test_an_error_in_the_block_comes_out_as_is_after_shutdown() -> None:
    events: Events = []
    with pytest.raises(Boom, match="user code"):
        async with actor_system(tree(events)):
            raise Boom("user code")
    assert events[-1] == ("stop", "db")


async def test_shutdown_cancels_what_outlives_its_timeout() -> None:
    class Stubborn(Actor[Any]):
        async def on_stop(self) -> None:
            await anyio.sleep_forever()

    with anyio.fail_after(2):
        async with actor_system(Stubborn(), shutdown_timeout=0.05) as system:
            pass
    assert system.root.state is State.STOPPED


async def test_systems_share_nothing() -> None:
    async with actor_system(tree([])) as one, actor_system(tree([])) as two:
        assert one.lookup("db") is not two.lookup("db")
        await one.shutdown()
        assert two.lookup("db").state is State.STARTED


async def test_an_actor_can_find_its_siblings_through_its_system() -> None:
    class Caller(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            return await self.system.lookup("callee").ask(message)

    root = Supervisor(
        [ChildSpec("callee", recorder([])), ChildSpec("caller", Caller, depends_on=("callee",))]
    )
    async with actor_system(root) as system:
        assert await system.lookup("caller").ask("ping") == "ping"


async def test_cancelling_the_system_while_it_boots_releases_what_was_acquired() -> None:
    released: list[str] = []

    class Booting(Actor[Any]):
        async def on_start(self) -> None:
            # A task group plus a cleanup that awaits, in the exit stack: on asyncio
            # this once tied the cancellation's __context__ into a loop and hung.
            await self.resources.enter_async_context(anyio.create_task_group())
            self.resources.push_async_callback(anyio.sleep, 0)
            self.resources.callback(released.append, self.ref.name)
            await anyio.sleep_forever()

    root = Supervisor([ChildSpec("fast", recorder([])), ChildSpec("slow", Booting)])
    with anyio.move_on_after(0.05) as scope:
        async with actor_system(root):
            pytest.fail("the block must not run")
    assert scope.cancelled_caught
    assert released == ["slow"]
