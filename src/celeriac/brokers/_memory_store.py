"""The state behind ``memory://`` brokers: queues, leases, dead letters, heartbeats.

One :class:`QueueStore` lives in the App's hub per name; every
:class:`~celeriac.brokers.memory.MemoryBroker` of that name, in any thread and
any event loop, works on it. All methods are synchronous, hold ``lock`` for a
few microseconds and never block, so they are safe to call from a coroutine.

Each queue keeps two heaps: ``ready`` ordered by ``(-priority, seq)`` (higher
priority first, publish order within) and ``delayed`` ordered by eta. Leases
live in one heap ordered by deadline. Heaps are cleaned lazily: an entry whose
message has moved on (acked, say) is skipped when it reaches the top, and the
lease heap is rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from celeriac._notify import Notifier
from celeriac.abc import DeadLetter, Delivery, Outgoing, QueueStats, WorkerInfo

__all__ = ["QueueStore"]

_READY, _DELAYED, _IN_FLIGHT, _DONE = range(4)
_NEVER = float("inf")


class _Message:
    __slots__ = ("body", "deadline", "deliveries", "id", "priority", "queue", "seq", "state")

    def __init__(self, out: Outgoing, seq: int) -> None:
        self.id = out.id
        self.queue = out.queue
        self.body = out.body
        self.priority = out.priority
        self.seq = seq
        self.deliveries = 0
        self.state = _READY
        self.deadline = 0.0


def _receipt(delivery: Delivery) -> tuple[_Message, int]:
    receipt: tuple[_Message, int] = delivery.receipt
    return receipt


class _Queue:
    __slots__ = ("delayed", "in_flight", "n_delayed", "n_ready", "ready")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Message]] = []
        self.delayed: list[tuple[float, int, _Message]] = []
        self.n_ready = 0
        self.n_delayed = 0
        self.in_flight = 0


class QueueStore:
    """Every queue of one ``memory://NAME`` broker, shared by its instances."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: notified when a message may have become due (publish, nack, replay)
        self.notifier = Notifier()
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._in_flight: dict[int, _Message] = {}
        self._leases: list[tuple[float, int, int, _Message]] = []
        self._revoked: dict[str, float] = {}
        self._revoke_log: list[tuple[int, str, float]] = []
        self._revoke_seq = itertools.count(1)
        self._dead: dict[str, tuple[DeadLetter, int]] = {}
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}

    # -- messages -----------------------------------------------------------------------

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Enqueue ``messages``: ready now, or delayed until their eta."""
        now = time.time()
        seq = self._seq
        push = heapq.heappush
        with self.lock:
            queues = self._queues
            for out in messages:
                q = queues.get(out.queue)
                if q is None:
                    q = queues[out.queue] = _Queue()
                msg = _Message(out, next(seq))
                if out.eta is not None and out.eta > now:
                    msg.state = _DELAYED
                    push(q.delayed, (out.eta, msg.seq, msg))
                    q.n_delayed += 1
                else:
                    push(q.ready, (-msg.priority, msg.seq, msg))
                    q.n_ready += 1
        self.notifier.notify()

    def claim(
        self, names: Sequence[str], limit: int, visibility: float
    ) -> tuple[list[Delivery], float]:
        """Hand out up to ``limit`` due messages, leased for ``visibility`` seconds.

        Returns the deliveries and, when there are none, how many seconds until one
        of these queues may have a due message (a delayed message or an expiring
        lease), for the caller's wait.
        """
        now = time.time()
        mono = time.monotonic()
        out: list[Delivery] = []
        with self.lock:
            self._expire_leases(mono)
            queues = [q for q in map(self._queues.get, names) if q is not None]
            for q in queues:
                if q.delayed and q.delayed[0][0] <= now:
                    self._promote(q, now)
            if len(queues) == 1:
                ready = queues[0].ready
                while ready and len(out) < limit:
                    self._hand_out(heapq.heappop(ready)[2], out, now, mono + visibility)
            elif queues:
                while len(out) < limit:
                    best: _Queue | None = None
                    best_priority = 0
                    for q in queues:  # earlier queues win ties: strict comparison
                        ready = q.ready
                        while ready and ready[0][2].state != _READY:
                            heapq.heappop(ready)
                        if ready and (best is None or ready[0][0] < best_priority):
                            best, best_priority = q, ready[0][0]
                    if best is None:
                        break
                    self._hand_out(heapq.heappop(best.ready)[2], out, now, mono + visibility)
            if out:
                return out, 0.0
            wake = self._leases[0][0] - mono if self._leases else _NEVER
            for q in queues:
                if q.delayed:
                    wake = min(wake, q.delayed[0][0] - now)
        return out, max(wake, 0.0)

    def _hand_out(self, msg: _Message, out: list[Delivery], now: float, deadline: float) -> None:
        if msg.state != _READY:
            return  # a stale heap entry: acked or purged while waiting
        q = self._queues[msg.queue]
        q.n_ready -= 1
        revoked_until = self._revoked.get(msg.id) if self._revoked else None
        if revoked_until is not None and revoked_until > now:
            msg.state = _DONE
            return
        msg.state = _IN_FLIGHT
        msg.deliveries += 1
        msg.deadline = deadline
        q.in_flight += 1
        self._in_flight[msg.seq] = msg
        heapq.heappush(self._leases, (deadline, next(self._seq), msg.deliveries, msg))
        receipt = (msg, msg.deliveries)  # names this delivery: hashable, and unique per delivery
        out.append(Delivery(msg.queue, msg.id, msg.body, msg.deliveries, receipt, msg.priority))

    def _promote(self, q: _Queue, now: float) -> None:
        delayed = q.delayed
        while delayed and delayed[0][0] <= now:
            msg = heapq.heappop(delayed)[2]
            if msg.state == _DELAYED:
                msg.state = _READY
                q.n_delayed -= 1
                q.n_ready += 1
                heapq.heappush(q.ready, (-msg.priority, msg.seq, msg))

    def _expire_leases(self, mono: float) -> None:
        leases = self._leases
        while leases and leases[0][0] <= mono:
            deadline, _, generation, msg = heapq.heappop(leases)
            if (
                msg.state == _IN_FLIGHT
                and msg.deadline == deadline
                and msg.deliveries == generation
            ):
                self._requeue(msg, 0.0, time.time())
        if len(leases) > 64 + 2 * len(self._in_flight):
            self._leases = [
                (m.deadline, next(self._seq), m.deliveries, m) for m in self._in_flight.values()
            ]
            heapq.heapify(self._leases)

    def _requeue(self, msg: _Message, delay: float, now: float) -> None:
        q = self._queues[msg.queue]
        q.in_flight -= 1
        del self._in_flight[msg.seq]
        if delay > 0:
            msg.state = _DELAYED
            q.n_delayed += 1
            heapq.heappush(q.delayed, (now + delay, msg.seq, msg))
        else:
            msg.state = _READY
            q.n_ready += 1
            heapq.heappush(q.ready, (-msg.priority, msg.seq, msg))

    def _finish(self, msg: _Message) -> None:
        q = self._queues[msg.queue]
        if msg.state == _IN_FLIGHT:
            q.in_flight -= 1
            del self._in_flight[msg.seq]
        elif msg.state == _READY:
            q.n_ready -= 1
        elif msg.state == _DELAYED:
            q.n_delayed -= 1
        msg.state = _DONE

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these messages, even if a later delivery of them is under way."""
        with self.lock:
            for d in deliveries:
                msg = _receipt(d)[0]
                if msg.state != _DONE:
                    self._finish(msg)

    def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        """Return these deliveries (if still current) to their queue after ``delay``."""
        now = time.time()
        with self.lock:
            for d in deliveries:
                msg, generation = _receipt(d)
                if msg.state == _IN_FLIGHT and msg.deliveries == generation:
                    self._requeue(msg, delay, now)
        self.notifier.notify()

    def extend(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Push the lease deadline of these deliveries (if still current)."""
        with self.lock:
            deadline = time.monotonic() + seconds
            for d in deliveries:
                msg, generation = _receipt(d)
                if msg.state == _IN_FLIGHT and msg.deliveries == generation:
                    msg.deadline = deadline
                    heapq.heappush(self._leases, (deadline, next(self._seq), msg.deliveries, msg))

    def purge(self, name: str) -> int:
        """Drop every ready and delayed message of queue ``name``."""
        with self.lock:
            q = self._queues.get(name)
            if q is None:
                return 0
            count = q.n_ready + q.n_delayed
            for _, _, msg in q.ready:
                msg.state = _DONE
            for _, _, msg in q.delayed:
                msg.state = _DONE
            q.ready, q.delayed = [], []
            q.n_ready = q.n_delayed = 0
            return count

    def stats(self) -> dict[str, QueueStats]:
        """Counts for every queue ever published to."""
        now = time.time()
        with self.lock:
            self._expire_leases(time.monotonic())
            for q in self._queues.values():
                if q.delayed and q.delayed[0][0] <= now:
                    self._promote(q, now)
            return {
                name: QueueStats(ready=q.n_ready, delayed=q.n_delayed, in_flight=q.in_flight)
                for name, q in self._queues.items()
            }

    # -- dead letters ---------------------------------------------------------------

    def dead_letter(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Finish these messages and keep them as dead letters (one per id)."""
        at = time.time()
        with self.lock:
            for d in deliveries:
                msg = _receipt(d)[0]
                if msg.state != _DONE:
                    self._finish(msg)
                self._dead.pop(d.id, None)  # re-insert: newest last
                letter = DeadLetter(d.id, d.queue, d.body, reason, at, d.deliveries)
                self._dead[d.id] = (letter, d.priority)

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        with self.lock:
            letters = list(itertools.islice(reversed(self._dead.values()), limit))
        return [letter for letter, _ in letters]

    def take_dead_letters(self, ids: Sequence[str]) -> list[Outgoing]:
        """Remove these dead letters and return them as messages to re-publish."""
        with self.lock:
            taken = [self._dead.pop(i) for i in dict.fromkeys(ids) if i in self._dead]
        return [Outgoing(lt.queue, lt.id, lt.body, priority) for lt, priority in taken]

    def purge_dead_letters(self) -> int:
        """Drop every dead letter."""
        with self.lock:
            count = len(self._dead)
            self._dead.clear()
            return count

    # -- revocation -----------------------------------------------------------------

    def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked for ``ttl`` seconds."""
        now = time.time()
        until = now + ttl
        with self.lock:
            for i in ids:
                self._revoked[i] = until
                self._revoke_log.append((next(self._revoke_seq), i, until))
            if len(self._revoke_log) > 256 + 2 * len(self._revoked):
                self._prune_revoked(now)

    def _prune_revoked(self, now: float) -> None:
        self._revoked = {i: t for i, t in self._revoked.items() if t > now}
        self._revoke_log = [e for e in self._revoke_log if self._revoked.get(e[1]) == e[2]]

    def revoked_since(self, cursor: Any) -> tuple[list[str], Any]:
        """Ids revoked (and still recorded) after ``cursor``, and the new cursor."""
        now = time.time()
        after = cursor if isinstance(cursor, int) else 0
        with self.lock:
            log = self._revoke_log
            start = bisect_right(log, after, key=lambda entry: entry[0])
            ids = [i for _, i, until in log[start:] if until > now]
            return ids, log[-1][0] if log else after

    # -- workers --------------------------------------------------------------------

    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record ``info`` as alive for ``ttl`` seconds."""
        with self.lock:
            self._workers[info.name] = (info, time.monotonic() + ttl)

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired (expired ones are dropped)."""
        mono = time.monotonic()
        with self.lock:
            for name in [n for n, (_, until) in self._workers.items() if until <= mono]:
                del self._workers[name]
            return [info for info, _ in self._workers.values()]

    def forget_worker(self, name: str) -> None:
        """Drop a worker's heartbeat."""
        with self.lock:
            self._workers.pop(name, None)
