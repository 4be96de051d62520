"""Which queues a worker fetches from next: queue preference and resource saturation.

Message priorities (0-9) are the broker's business: every backend hands out the
highest priority first, then the oldest, and among messages of equal priority it
prefers the queues named first (the conformance suite checks all three). What a
worker asks for is this module's business. Before each fetch the consumer asks
its :class:`FetchStrategy` which of its queues to fetch from, in which order of
preference, given the load of each task kind in the worker:

* :class:`QueueOrder` keeps the worker's own order (``-Q high,default,low``):
  the per-queue preference, nothing more.
* :class:`ResourceSaturation` (the default; CEP "Resource Saturation") keeps that
  order but looks at the kinds of task routed to each queue. A kind *wants*
  enough work to fill its free runners plus one round buffered
  (``maximum - running + headroom * maximum - queued``); it is *saturated* when it
  wants nothing. Queues that only feed saturated kinds are left alone for now
  (their messages stay in the broker, for a worker with room, instead of
  waiting here), queues that partly feed them come after the rest, and no
  queue is asked for more than the kinds it feeds want. So a worker whose
  process budget (CPU-bound tasks) is full fetches I/O-bound work, and the other
  way round: the cluster's capacity is used instead of piling work where it
  cannot run.

A plan is a list of :class:`Fetch` steps. The consumer waits (up to its fetch
timeout) on the first step only; it takes the next step, without waiting, only
if the previous one came back full (there is more to have). Resource saturation
plans one step per level of want: first every chosen queue, capped at the
smallest want among them; then the queues whose kinds want more, capped at the
next level, and so on. A quiet worker thus waits on all its queues at once, and
a busy one fills each kind up to what it wants in a round trip or two.

A strategy is any object with a ``plan`` method; it does no I/O and is called
before every fetch, so it must be cheap. Queues whose task kinds are unknown (a
message routed to a queue by hand, say) are never held back nor capped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

__all__ = ["Fetch", "FetchStrategy", "KindLoad", "QueueOrder", "ResourceSaturation"]


class KindLoad(NamedTuple):
    """The load of one task kind in a worker."""

    queued: int  #: jobs waiting in the worker for a runner
    running: int  #: jobs running
    maximum: int  #: the most that may run at once (the budget's maximum)


class Fetch(NamedTuple):
    """One fetch step: from ``queues`` (most preferred first), at most ``limit``."""

    queues: list[str]
    limit: int | None = None  #: ``None``: as many as the worker has room for


class FetchStrategy(Protocol):
    """Decides, before each fetch, which queues to fetch from and how much."""

    def plan(
        self,
        queues: Sequence[str],
        kinds: Mapping[str, frozenset[str]],
        load: Mapping[str, KindLoad],
    ) -> list[Fetch]:
        """The steps of the next fetch; ``[]`` fetches nothing now.

        ``queues`` is the worker's own preference, ``kinds`` the task kinds routed to
        each queue (absent: unknown), ``load`` the load of each kind.
        """


class QueueOrder:
    """Fetch from every queue, in the order the worker lists them."""

    def plan(
        self,
        queues: Sequence[str],
        kinds: Mapping[str, frozenset[str]],
        load: Mapping[str, KindLoad],
    ) -> list[Fetch]:
        """The worker's queues, unchanged, as many messages as there is room for."""
        return [Fetch(list(queues))]

    def __repr__(self) -> str:
        return "QueueOrder()"


class ResourceSaturation:
    """Prefer queues whose kinds of task have room; leave saturated ones in the broker.

    ``headroom`` is how many rounds of a kind's maximum concurrency may wait in
    the worker beyond what runs (default 1: enough to keep its runners busy
    until the next fetch).
    """

    def __init__(self, headroom: float = 1.0) -> None:
        if headroom <= 0:
            raise ValueError(f"headroom must be positive, got {headroom}")
        self.headroom = headroom

    def __repr__(self) -> str:
        return f"ResourceSaturation(headroom={self.headroom})"

    def wants(self, load: KindLoad) -> int:
        """How many more jobs of this kind the worker should take now (0: saturated)."""
        buffered = math.ceil(self.headroom * max(1, load.maximum))
        return max(0, max(1, load.maximum) - load.running + buffered - load.queued)

    def plan(
        self,
        queues: Sequence[str],
        kinds: Mapping[str, frozenset[str]],
        load: Mapping[str, KindLoad],
    ) -> list[Fetch]:
        """Free queues first, then partly saturated ones; fully saturated ones not at all."""
        wants = {kind: self.wants(kind_load) for kind, kind_load in load.items()}
        full = {kind for kind, want in wants.items() if want == 0}
        free: list[str] = []
        partly: list[str] = []
        cap: dict[str, float] = {}  # per chosen queue: what its kinds want
        for queue in queues:
            fed = kinds.get(queue)
            if not fed or not fed <= wants.keys():
                free.append(queue)  # unknown kinds: never held back, never capped
                cap[queue] = math.inf
                continue
            busy = len(fed & full)
            if busy == len(fed):
                continue
            (free if busy == 0 else partly).append(queue)
            cap[queue] = sum(wants[kind] for kind in fed)
        chosen = free + partly
        steps = []
        for level in sorted(set(cap.values())):
            step = [queue for queue in chosen if cap[queue] >= level]
            steps.append(Fetch(step, None if level == math.inf else int(level)))
        return steps
