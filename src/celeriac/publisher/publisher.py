"""The publisher: sends messages to brokers from an in-memory backlog.

Callers never wait on the network: :meth:`Publisher.submit` appends to the
backlog (thread-safe, any thread, any loop) and returns. The publisher's own
coroutine drains the backlog in batches, oldest first, one ``publish`` call per
broker per batch. If a broker refuses or is unreachable, the batch goes back to
the front of the backlog and is retried with bounded exponential backoff: a
message leaves the backlog only when its broker has accepted it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

import anyio
import anyio.abc

from celeriac._notify import Notifier
from celeriac.abc import Broker, Outgoing

__all__ = ["Publisher"]

log = logging.getLogger("celeriac.publisher")


class Publisher:
    """Drains a backlog of (broker url, message) pairs into the brokers."""

    def __init__(
        self,
        brokers: Mapping[str, Broker],
        *,
        batch_size: int = 1024,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        self.brokers = brokers
        self.batch_size = batch_size
        self.backoff = backoff
        self._backlog: deque[tuple[str, Outgoing]] = deque()
        self._wakeup = Notifier()
        self._progress = Notifier()
        self._sending = 0
        self._idle = False
        self._closing = False
        self.published = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._backlog) + self._sending

    def submit(self, broker_url: str, message: Outgoing) -> None:
        """Queue ``message`` for ``broker_url``. Never blocks; safe from any thread."""
        if broker_url not in self.brokers:
            raise KeyError(f"no broker {broker_url!r} in this publisher")
        self._backlog.append((broker_url, message))
        if self._idle:
            self._idle = False
            self._wakeup.notify()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has been accepted; False on timeout."""
        with anyio.move_on_after(timeout):
            while True:
                version = self._progress.version
                if not self._backlog and not self._sending:
                    return True
                await self._progress.wait(version, timeout=0.5)
        return not self._backlog and not self._sending

    def close(self) -> None:
        """Ask :meth:`run` to return once the backlog is empty."""
        self._closing = True
        self._wakeup.notify()

    def _take_batch(self) -> dict[str, list[Outgoing]]:
        batch: dict[str, list[Outgoing]] = {}
        backlog = self._backlog
        for _ in range(min(self.batch_size, len(backlog))):
            url, message = backlog.popleft()
            batch.setdefault(url, []).append(message)
        return batch

    def _give_back(self, batch: dict[str, list[Outgoing]]) -> None:
        items = [(url, m) for url, messages in batch.items() for m in messages]
        self._backlog.extendleft(reversed(items))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish until closed and drained. Run it in a task group."""
        self._closing = False
        task_status.started()
        delay = self.backoff[0]
        while True:
            version = self._wakeup.version
            if not self._backlog:
                if self._closing:
                    return
                self._idle = True
                if not self._backlog:  # submitted before _idle was seen: no wake-up coming
                    await self._wakeup.wait(version)
                self._idle = False
                continue
            batch = self._take_batch()
            self._sending = sum(len(m) for m in batch.values())
            try:
                for url in list(batch):
                    await self.brokers[url].publish(batch[url])
                    self.published += len(batch.pop(url))
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "publish failed, %d message(s) kept in the backlog; retrying in %.2fs: %r",
                    len(self._backlog) + sum(len(m) for m in batch.values()),
                    delay,
                    exc,
                )
            finally:
                # Whatever was not accepted goes back to the front, even on cancellation.
                self._give_back(batch)
                self._sending = 0
            if batch:
                self._progress.notify()
                await anyio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self._progress.notify()
