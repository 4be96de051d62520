"""One actor: its lifecycle, mailbox, tell/ask, run loop and resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from tests.actors.actor_helpers import Boom, Recorder

from celeriac.actors import (
    Actor,
    ActorRef,
    ChildSpec,
    Restart,
    StartChild,
    State,
    Supervisor,
    actor_system,
)
from celeriac.errors import ActorError, ActorNotRunning, AskTimeout, MailboxFull

pytestmark = pytest.mark.anyio


class Gate(Actor[Any]):
    """Blocks on ``"block"`` until ``gate`` is set; answers anything else at once."""

    mailbox_size = 2

    def __init__(self, gate: anyio.Event, handling: anyio.Event) -> None:
        self.gate = gate
        self.handling = handling
        self.seen: list[Any] = []

    async def receive(self, message: Any) -> Any:
        self.seen.append(message)
        if message == "block":
            self.handling.set()
            await self.gate.wait()
        elif message == "fail":
            raise Boom("handler failed")
        elif message == "slow":
            await anyio.sleep(1)
        return message * 2 if isinstance(message, int) else message


async def test_actor_passes_through_each_lifecycle_state() -> None:
    seen: list[tuple[str, State]] = []

    class Witness(Actor[Any]):
        async def on_start(self) -> None:
            seen.append(("on_start", self.ref.state))

        async def receive(self, message: Any) -> Any:
            seen.append(("receive", self.ref.state))

        async def on_stop(self) -> None:
            seen.append(("on_stop", self.ref.state))

    async with actor_system(Witness()) as system:
        ref = system.root
        assert system.root.state is State.STARTED
        await ref.ask("hello")
    assert ref.state is State.STOPPED
    assert seen == [
        ("on_start", State.STARTING),
        ("receive", State.STARTED),
        ("on_stop", State.STOPPING),
    ]


async def test_wait_for_returns_at_once_when_already_there() -> None:
    async with actor_system(Recorder([])) as system:
        assert await system.root.wait_for(timeout=0.1) is State.STARTED
        assert await system.root.wait_for(State.STOPPED, State.STARTED) is State.STARTED


async def test_wait_for_sees_a_state_however_briefly_it_lasts() -> None:
    async with actor_system(Recorder([])) as system:
        ref = system.root
        result: list[State] = []

        async def watch() -> None:
            result.append(await ref.wait_for(State.STOPPING, timeout=1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            await system.shutdown()
    assert result == [State.STOPPING]
    assert ref.state is State.STOPPED


async def test_wait_for_raises_when_the_actor_crashes_instead() -> None:
    events: list[tuple[str, str]] = []
    root = Supervisor([ChildSpec("x", lambda: Recorder(events), restart=Restart.TEMPORARY)])
    async with actor_system(root) as system:
        ref = system.lookup("x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.tell, "crash")
            with pytest.raises(ActorNotRunning, match="'root/x' crashed while waiting for STOPPED"):
                await ref.wait_for(State.STOPPED, timeout=1)
    assert isinstance(ref.failure, Boom)


async def test_wait_for_started_raises_when_the_start_fails() -> None:
    gate = anyio.Event()

    class FailsLater(Actor[Any]):
        async def on_start(self) -> None:
            await gate.wait()
            raise Boom("no database")

    spec = ChildSpec("late", FailsLater, mandatory=False, retry_interval=60)
    async with actor_system(Supervisor()) as system, anyio.create_task_group() as tg:
        tg.start_soon(system.root.ask, StartChild(spec))
        await anyio.wait_all_tasks_blocked()
        ref = system.lookup("late")
        assert ref.state is State.STARTING
        gate.set()
        with pytest.raises(ActorNotRunning, match="crashed while waiting for STARTED") as info:
            await ref.wait_for(State.STARTED, timeout=1)
    assert isinstance(info.value.__cause__, Boom)


async def test_wait_for_times_out() -> None:
    async with actor_system(Recorder([])) as system:
        with pytest.raises(TimeoutError):
            await system.root.wait_for(State.STOPPED, timeout=0.01)


async def test_ask_returns_what_receive_returns() -> None:
    async with actor_system(Gate(anyio.Event(), anyio.Event())) as system:
        assert await system.root.ask(21) == 42
        assert await system.root.ask("x") == "x"


async def test_ask_reraises_the_handlers_error_and_the_actor_keeps_running() -> None:
    async with actor_system(Gate(anyio.Event(), anyio.Event())) as system:
        with pytest.raises(Boom, match="handler failed"):
            await system.root.ask("fail")
        assert system.root.state is State.STARTED
        assert await system.root.ask(1) == 2


async def test_ask_times_out_with_ask_timeout() -> None:
    async with actor_system(Gate(anyio.Event(), anyio.Event())) as system:
        with pytest.raises(AskTimeout) as info:
            await system.root.ask("slow", timeout=0.02)
        assert isinstance(info.value, TimeoutError)
        assert system.root.state is State.STARTED


async def test_a_failing_told_message_crashes_the_actor() -> None:
    root = Supervisor([ChildSpec("x", lambda: Recorder([]), restart=Restart.TEMPORARY)])
    async with actor_system(root) as system:
        ref = system.lookup("x")
        await ref.tell("crash")
        await ref.wait_for(State.CRASHED, timeout=1)
        assert isinstance(ref.failure, Boom)
        with pytest.raises(ActorNotRunning, match="not running"):
            await ref.tell("hello")
        with pytest.raises(ActorNotRunning):
            ref.try_tell("hello")
        with pytest.raises(ActorNotRunning):
            await ref.ask("hello")


async def test_messages_to_an_actor_that_never_started_raise() -> None:
    ref: ActorRef[Any] = ActorRef("nowhere")
    assert ref.state is State.INITIALIZING
    with pytest.raises(ActorNotRunning, match="INITIALIZING"):
        await ref.tell(1)
    with pytest.raises(ActorNotRunning):
        await ref.ask(1)


async def test_a_full_mailbox_makes_tell_wait_and_try_tell_raise() -> None:
    gate, handling = anyio.Event(), anyio.Event()
    actor = Gate(gate, handling)
    async with actor_system(actor) as system:
        ref = system.root
        await ref.tell("block")
        await handling.wait()  # the actor holds "block"; the mailbox (2) is empty
        await ref.tell(1)
        ref.try_tell(2)
        with pytest.raises(MailboxFull):
            ref.try_tell(3)
        with anyio.move_on_after(0.05) as waited:
            await ref.tell(3)
        assert waited.cancelled_caught, "tell should wait while the mailbox is full"
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.tell, 4)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert await ref.ask(5) == 10
    assert actor.seen == ["block", 1, 2, 4, 5]


async def test_asks_left_in_the_mailbox_fail_when_the_actor_stops() -> None:
    gate, handling = anyio.Event(), anyio.Event()
    outcomes: list[str] = []
    async with actor_system(Gate(gate, handling)) as system:
        ref = system.root

        async def ask(message: int) -> None:
            try:
                await ref.ask(message, timeout=5)
            except ActorNotRunning:
                outcomes.append(f"ask {message}: not running")

        async def tell(message: int) -> None:
            await ref.tell(message)
            outcomes.append(f"tell {message}: taken")

        await ref.tell("block")
        await handling.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, 1)  # in the mailbox
            tg.start_soon(tell, 2)  # in the mailbox: now it is full
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(ask, 3)  # waits for room
            tg.start_soon(tell, 4)  # waits for room
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(1):
                await system.shutdown()
    # Asks in the mailbox, or waiting for room in it, fail at once; a waiting tell
    # is taken into the mailbox as it drains, and dropped like the others there.
    assert sorted(outcomes) == [
        "ask 1: not running",
        "ask 3: not running",
        "tell 2: taken",
        "tell 4: taken",
    ]
    with pytest.raises(ActorNotRunning):
        await ref.tell(5)


async def test_run_loop_runs_alongside_the_mailbox() -> None:
    class Ticker(Actor[Any]):
        def __init__(self) -> None:
            self.ticks = 0

        async def run(self) -> None:
            while True:
                self.ticks += 1
                await anyio.sleep(0.001)

        async def receive(self, message: Any) -> Any:
            return self.ticks

    async with actor_system(Ticker()) as system:
        first = await system.root.ask("ticks?")
        await anyio.sleep(0.02)
        assert await system.root.ask("ticks?") > first


async def test_a_run_loop_that_returns_leaves_the_actor_running() -> None:
    class Once(Actor[Any]):
        async def run(self) -> None:
            return

        async def receive(self, message: Any) -> Any:
            return message

    async with actor_system(Once()) as system:
        await anyio.sleep(0.01)
        assert system.root.state is State.STARTED
        assert await system.root.ask("still here") == "still here"


async def test_a_run_loop_that_raises_crashes_the_actor() -> None:
    class Broken(Actor[Any]):
        async def run(self) -> None:
            await anyio.sleep(0.01)
            raise Boom("loop failed")

    root = Supervisor([ChildSpec("loop", Broken, restart=Restart.TEMPORARY)])
    async with actor_system(root) as system:
        ref = system.lookup("loop")
        await ref.wait_for(State.CRASHED, timeout=1)
        assert isinstance(ref.failure, Boom)


async def test_resources_are_released_in_the_actors_own_task() -> None:
    log: list[tuple[str, int]] = []

    @asynccontextmanager
    async def resource(name: str) -> AsyncIterator[str]:
        log.append((f"acquire {name}", anyio.get_current_task().id))
        try:
            yield name
        finally:
            log.append((f"release {name}", anyio.get_current_task().id))

    class Holder(Actor[Any]):
        async def on_start(self) -> None:
            await self.resources.enter_async_context(resource("a"))
            await self.resources.enter_async_context(resource("b"))

        async def on_stop(self) -> None:
            log.append(("on_stop", anyio.get_current_task().id))

    async with actor_system(Holder()):
        pass
    assert [what for what, _ in log] == [
        "acquire a",
        "acquire b",
        "on_stop",
        "release b",
        "release a",
    ]
    assert len({task for _, task in log}) == 1


async def test_a_failed_on_start_releases_what_it_acquired_and_skips_on_stop() -> None:
    log: list[str] = []

    class HalfStarted(Actor[Any]):
        async def on_start(self) -> None:
            self.resources.callback(log.append, "released")
            raise Boom("half way")

        async def on_stop(self) -> None:
            log.append("on_stop")

    with pytest.raises(Boom, match="half way"):
        async with actor_system(HalfStarted()):
            pytest.fail("the block must not run")
    assert log == ["released"]


async def test_on_stop_failing_marks_the_actor_crashed() -> None:
    class BadStop(Actor[Any]):
        async def on_stop(self) -> None:
            raise Boom("cannot release")

    root = Supervisor([ChildSpec("x", BadStop)])
    async with actor_system(root) as system:
        ref = system.lookup("x")
    assert ref.state is State.CRASHED
    assert isinstance(ref.failure, Boom)


async def test_an_actor_that_will_not_stop_is_cancelled_after_its_timeout() -> None:
    class Stubborn(Actor[Any]):
        async def on_stop(self) -> None:
            await anyio.sleep_forever()

    root = Supervisor([ChildSpec("x", Stubborn, shutdown_timeout=0.05)])
    with anyio.fail_after(2):
        async with actor_system(root) as system:
            ref = system.lookup("x")
    assert ref.state is State.STOPPED


async def test_an_actor_used_outside_a_system_says_so() -> None:
    with pytest.raises(ActorError, match="not running"):
        _ = Recorder([]).ref


async def test_a_failure_in_a_task_group_among_the_resources_crashes_the_actor() -> None:
    class Service(Actor[Any]):
        async def on_start(self) -> None:
            self.tg = await self.resources.enter_async_context(anyio.create_task_group())
            self.tg.start_soon(self.work)

        async def work(self) -> None:
            await anyio.sleep(0.01)
            raise Boom("service failed")

        async def on_stop(self) -> None:
            self.tg.cancel_scope.cancel()

    root = Supervisor([ChildSpec("svc", Service, restart=Restart.TEMPORARY)])
    async with actor_system(root) as system:
        ref = system.lookup("svc")
        await ref.wait_for(State.CRASHED, timeout=1)
    assert isinstance(ref.failure, Boom)  # not a group of one
