"""The publisher: sends messages to brokers from a backlog, and never drops one.

Callers never wait on the network: :meth:`Publisher.submit` appends to the
backlog (thread-safe, any thread, any loop) and returns a
:class:`~celeriac.publisher.backlog.Ticket`. The publisher's own coroutine drains
the backlog in batches, oldest first, one ``publish`` call per broker per batch,
each under a timeout. If a broker refuses, is unreachable or does not answer in
time, the batch goes back to the front of the backlog and is retried with
bounded exponential backoff: a message leaves the backlog only when its broker
has accepted it, and then its ticket says so.

An outage is logged once: a warning when a broker starts failing, an info line
when it accepts messages again, with how long it was away and how many messages
waited; the retries in between are logged at debug level.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from celeriac._notify import Notifier
from celeriac.abc import Broker, Outgoing
from celeriac.publisher.backlog import Backlog, Confirmations, MemoryBacklog, Ticket

__all__ = ["Publisher"]

log = logging.getLogger("celeriac.publisher")


class Publisher:
    """Drains a backlog of messages (each for one broker URL) into the brokers.

    ``backlog`` defaults to a :class:`~celeriac.publisher.backlog.MemoryBacklog`; a
    durable one must be opened before it is given here. ``timeout`` bounds every
    ``publish`` call (``None``: no bound); ``backoff`` is the first and the longest
    pause between failed attempts.
    """

    def __init__(
        self,
        brokers: Mapping[str, Broker],
        *,
        backlog: Backlog | None = None,
        batch_size: int = 1024,
        backoff: tuple[float, float] = (0.05, 5.0),
        timeout: float | None = 10.0,
    ) -> None:
        self.brokers = brokers
        self.batch_size = batch_size
        self.backoff = backoff
        self.timeout = timeout
        self.backlog: Backlog = backlog if backlog is not None else MemoryBacklog()
        self.confirmations = Confirmations()
        self._append = self.backlog.append
        self._wakeup = Notifier()
        self._progress = self.confirmations.notifier
        self._sending = 0
        self._idle = False
        self._closing = False
        self._outages: dict[str, float] = {}  # broker URL -> when it started failing
        self.published = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self.backlog) + self._sending

    def submit(self, broker_url: str, message: Outgoing) -> Ticket:
        """Queue ``message`` for ``broker_url``; its ticket says when it is accepted.

        Never waits on the network; safe from any thread. (A durable backlog writes
        the message to its file before this returns.)
        """
        if broker_url not in self.brokers:
            raise KeyError(f"no broker {broker_url!r} in this publisher")
        ticket = Ticket(broker_url, message, self.confirmations)
        self._append(ticket)
        if self._idle:
            self._idle = False
            self._wakeup.notify()
        return ticket

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has been accepted; False on timeout."""
        with anyio.move_on_after(timeout):
            while True:
                version = self._progress.version
                if not len(self.backlog) and not self._sending:
                    return True
                await self._progress.wait(version, timeout=0.5)
        return not len(self.backlog) and not self._sending

    def close(self) -> None:
        """Ask :meth:`run` to return once the backlog is empty."""
        self._closing = True
        self._wakeup.notify()

    def _take_batch(self) -> dict[str, list[Ticket]]:
        batch: dict[str, list[Ticket]] = {}
        for ticket in self.backlog.take(self.batch_size):
            batch.setdefault(ticket.url, []).append(ticket)
        return batch

    async def _publish(self, url: str, tickets: Sequence[Ticket]) -> None:
        messages = [t.message for t in tickets if t.message is not None]
        broker = self.brokers[url]
        if self.timeout is None:
            await broker.publish(messages)
            return
        with anyio.move_on_after(self.timeout):
            await broker.publish(messages)
            return
        # A publish cut off here may still have reached the broker: sending the batch
        # again can duplicate messages (at-least-once), never lose them.
        raise TimeoutError(f"no answer within {self.timeout}s")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish until closed and drained. Run it in a task group."""
        self._closing = False
        task_status.started()
        delay = self.backoff[0]
        while True:
            version = self._wakeup.version
            if not len(self.backlog):
                if self._closing:
                    return
                self._idle = True
                if not len(self.backlog):  # submitted before _idle was seen: no wake-up
                    await self._wakeup.wait(version)
                self._idle = False
                continue
            batch = self._take_batch()
            self._sending = sum(len(t) for t in batch.values())
            accepted: list[Ticket] = []
            try:
                for url in list(batch):
                    started = time.monotonic()
                    await self._publish(url, batch[url])
                    self._recovered(url, len(self) - len(accepted))
                    accepted += batch.pop(url)
            except Exception as exc:
                self.failures += 1
                self._failed(url, exc, started, len(self) - len(accepted), delay)
            finally:
                # Whatever was not accepted goes back to the front, even on cancellation.
                for rest in reversed(batch.values()):
                    self.backlog.give_back(rest)
                if accepted:
                    self.published += len(accepted)
                    with anyio.CancelScope(shield=True):
                        await self.backlog.remove(accepted)
                    self.confirmations.mark(accepted)
                self._sending = 0
                self.confirmations.notify()  # once per round: flush() and confirmations
            if batch:
                await anyio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]

    def _failed(self, url: str, exc: Exception, since: float, waiting: int, delay: float) -> None:
        if url in self._outages:
            log.debug("publish to %s failed again, retrying in %.2fs: %r", url, delay, exc)
            return
        self._outages[url] = since
        log.warning(
            "broker %s did not accept messages (%r); they wait in the backlog (%d now) and "
            "are retried with backoff up to %.1fs until it does",
            url,
            exc,
            waiting,
            self.backoff[1],
        )

    def _recovered(self, url: str, waiting: int) -> None:
        since = self._outages.pop(url, None)
        if since is not None:
            log.info(
                "broker %s accepts messages again after %.1fs; %d message(s) were held "
                "in the backlog",
                url,
                time.monotonic() - since,
                waiting,
            )
