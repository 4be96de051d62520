"""A broker or sink whose server did not answer at start, connected in the background.

A producer must not fail because its broker is down when it starts: its messages
wait in the publisher's backlog until the broker returns (CEP "Messages
Backlog"). :class:`Deferred` stands in for such a backend: until
:meth:`Deferred.keep_connecting` has connected it, every coroutine method raises
:class:`~celeriac.errors.BrokerError` — which the publisher, the result waiter,
the consumer and the lease keeper already treat as "the server is away: back off
and try again" — and afterwards every call goes straight to the backend.

Only network backends are deferred; an embedded one (SQLite, memory) that cannot
open is a configuration error and fails at once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import anyio

from celeriac.brokers._url import redact
from celeriac.errors import BrokerError

__all__ = ["NETWORK_SCHEMES", "Deferred"]

log = logging.getLogger("celeriac.runtime")

NETWORK_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "nats", "postgresql", "postgres"})


class Deferred:
    """Stands in for ``backend`` until its server answers (see the module docstring)."""

    def __init__(self, backend: Any, url: str, first_error: BaseException | None) -> None:
        self.backend = backend
        self.url = url
        self.ready = False
        self._error = first_error

    def __repr__(self) -> str:
        state = "connected" if self.ready else "waiting for its server"
        return f"<Deferred {self.backend!r} ({state})>"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.backend, name)
        if self.ready or not inspect.iscoroutinefunction(value):
            return value
        return self._unavailable

    async def _unavailable(self, *args: Any, **kwargs: Any) -> Any:
        raise BrokerError(
            f"{redact(self.url)} has not answered since start ({self._error}); "
            "still trying in the background"
        )

    async def keep_connecting(self, backoff: tuple[float, float] = (0.2, 5.0)) -> None:
        """Connect, retrying with bounded backoff, until it works (or cancellation)."""
        delay = backoff[0]
        while not self.ready:
            await anyio.sleep(delay)
            delay = min(delay * 2, backoff[1])
            try:
                await self.backend.connect()
            except BrokerError as exc:
                self._error = exc
                log.debug("still cannot reach %s: %s", redact(self.url), exc)
                continue
            self.ready = True
            log.warning("connected to %s: what waited is sent now", redact(self.url))

    async def close(self) -> None:
        """Close the backend if it was ever connected."""
        if self.ready:
            await self.backend.close()


async def connect_or_defer(
    make: Callable[[], Any], url: str, scheme: str, wait: float
) -> tuple[Any, Deferred | None]:
    """Connect a new backend; a network one that does not answer within ``wait``
    seconds comes back as a :class:`Deferred` (and the second value says so)."""
    backend = make()
    if scheme not in NETWORK_SCHEMES:
        await backend.connect()
        return backend, None
    error: BaseException | None = None
    with anyio.move_on_after(wait):
        try:
            await backend.connect()
        except BrokerError as exc:
            error = exc
        else:
            return backend, None
    if error is None:
        error = TimeoutError(f"no answer within {wait}s")
    log.warning(
        "cannot reach %s at start (%s): messages wait in the backlog; retrying in the background",
        redact(url),
        error,
    )
    deferred = Deferred(backend, url, error)
    return deferred, deferred
