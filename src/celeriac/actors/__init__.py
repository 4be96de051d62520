"""The actor core: lifecycle, mailboxes, supervision and boot steps, on anyio.

An actor is one long-lived task in its supervisor's task group. It owns its state,
is reached only through its ``ActorRef`` (``tell``, ``try_tell``, ``ask``), and goes
through an observable lifecycle (``State``). A ``Supervisor`` starts its children in
dependency order (boot steps), restarts them by OTP's rules, and stops them in
reverse order. ``actor_system(root)`` runs a tree. See ``docs/actors.md``.
"""

from __future__ import annotations

from ._actor import Actor
from ._ref import ActorRef
from ._service import ServiceActor
from ._spec import Backoff, ChildSpec, Restart, StartChild, StopChild, Strategy, boot_order
from ._state import ActorStatus, State
from ._supervisor import Supervisor
from ._system import ActorSystem, actor_system

__all__ = [
    "Actor",
    "ActorRef",
    "ActorStatus",
    "ActorSystem",
    "Backoff",
    "ChildSpec",
    "Restart",
    "ServiceActor",
    "StartChild",
    "State",
    "StopChild",
    "Strategy",
    "Supervisor",
    "actor_system",
    "boot_order",
]
