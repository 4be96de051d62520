r"""The worker's connections as an actor (the other parts are ``ServiceActor``\ s).

Stopping the worker's children in reverse dependency order *is* its shutdown
sequence: the consumer stops fetching, the executors give running tasks their
grace period, the result publisher settles everything, and the connections
close last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.actors import Actor

if TYPE_CHECKING:
    from celeriac.runtime import Bridge, Runtime

__all__ = ["ConnectionsActor"]


class ConnectionsActor(Actor[None]):
    """Holds the worker's runtime open: broker and sink connections, publisher."""

    def __init__(self, runtime: Runtime, bridge: Bridge) -> None:
        self.runtime = runtime
        self.bridge = bridge

    async def on_start(self) -> None:
        """Connect, and let tasks that publish from this loop use these connections."""
        await self.resources.enter_async_context(self.runtime.running())
        self.bridge.attach(self.runtime)

    async def on_stop(self) -> None:
        """Stop routing callers here; the connections close with the resources."""
        self.bridge.detach(self.runtime)
