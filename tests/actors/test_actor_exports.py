"""``celeriac.actors`` exports exactly its documented API, each name documented."""

from __future__ import annotations

import celeriac.actors

DOCUMENTED = {
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
}


def test_all_is_sorted_and_exactly_the_documented_api() -> None:
    assert celeriac.actors.__all__ == sorted(celeriac.actors.__all__)
    assert set(celeriac.actors.__all__) == DOCUMENTED


def test_every_public_name_has_a_docstring() -> None:
    for name in celeriac.actors.__all__:
        assert getattr(celeriac.actors, name).__doc__, name
