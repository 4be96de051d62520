"""The actor lifecycle: states, the legal transitions between them, status snapshots.

::

    INITIALIZING ──► STARTING ──► STARTED ──► STOPPING ──► STOPPED
                        │  │                     │            │
                        │  └──────► CRASHED ◄────┘            │
                        │              │                      │
                        └──────────────┴──── (restart) ◄──────┘

A supervisor restarts an actor from STOPPED or CRASHED: the same ``ActorRef`` goes
through STARTING again with a fresh actor instance. Cancellation from outside (a
hard kill) may also take STARTING or STARTED straight to STOPPED.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["TERMINAL", "ActorStatus", "State", "can_transition"]


class State(Enum):
    """Where an actor is in its life. Only the actor's own task changes it."""

    INITIALIZING = "initializing"
    """Created, never started."""
    STARTING = "starting"
    """``on_start`` is running: resources are being acquired."""
    STARTED = "started"
    """Ready: the mailbox is open and ``run`` (if any) is running."""
    STOPPING = "stopping"
    """The mailbox is closed and ``on_stop`` is releasing resources."""
    STOPPED = "stopped"
    """Stopped on purpose (or cancelled); a supervisor may start it again."""
    CRASHED = "crashed"
    """Ended by an exception, kept in ``ActorRef.failure``; a supervisor may restart it."""


TERMINAL = frozenset({State.STOPPED, State.CRASHED})
"""The states in which an incarnation of an actor has ended."""

_ALLOWED: dict[State, frozenset[State]] = {
    State.INITIALIZING: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.STARTED, State.STOPPING, State.STOPPED, State.CRASHED}),
    State.STARTED: frozenset({State.STOPPING, State.STOPPED, State.CRASHED}),
    State.STOPPING: frozenset({State.STOPPED, State.CRASHED}),
    State.STOPPED: frozenset({State.STARTING}),
    State.CRASHED: frozenset({State.STARTING}),
}


def can_transition(current: State, new: State) -> bool:
    """Whether the lifecycle allows going from ``current`` to ``new``."""
    return new in _ALLOWED[current]


@dataclass(frozen=True, slots=True)
class ActorStatus:
    """A snapshot of one actor, as ``ActorSystem.health()`` reports it."""

    path: str
    """Where the actor sits in the supervision tree, e.g. ``"root/worker/consumer"``."""
    state: State
    """Its state when the snapshot was taken."""
    restarts: int
    """How many times it was started again after its first start."""
    failure: str | None
    """``repr`` of the exception that last crashed it, if any."""
