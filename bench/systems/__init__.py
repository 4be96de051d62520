"""One module per system measured. Each exposes ``SCENARIOS``, a list of
:class:`bench.harness.Scenario`.

To add a peer (Celery, Dramatiq, arq, Taskiq, Huey, RQ...), write
``bench/systems/<peer>_<broker>.py`` whose scenarios reuse celeriac's ``workload``
keys for the same measurements (so the report shows ratios), and list it in
``MODULES``; give it a ``DESCRIPTION`` (markdown: how the system is configured
for each workload, and why), which RESULTS.md shows. A module that fails to
import (its client is not installed) is reported and skipped; the others still
run.
"""

from __future__ import annotations

import importlib

from bench.harness import Scenario, say

__all__ = ["MODULES", "load_scenarios"]

MODULES = [
    "bench.systems.celeriac_sqlite",
    "bench.systems.celeriac_memory",
    "bench.systems.celeriac_redis",
    "bench.systems.celeriac_amqp",
    "bench.systems.celeriac_nats",
    "bench.systems.celeriac_postgres",
    "bench.systems.celery_redis",
    "bench.systems.dramatiq_redis",
    "bench.systems.arq_redis",
    "bench.systems.taskiq_redis",
    "bench.systems.huey_redis",
    "bench.systems.rq_redis",
]


def load_scenarios() -> tuple[list[Scenario], dict[str, str], dict[str, str]]:
    """Every scenario of every importable system module, the import errors of the rest, and
    each system's ``DESCRIPTION`` (how it is configured and why; markdown), by system."""
    scenarios: list[Scenario] = []
    broken: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            broken[name] = f"{type(exc).__name__}: {exc}"
            say(f"skipping {name}: {broken[name]}")
            continue
        scenarios.extend(module.SCENARIOS)
        description = getattr(module, "DESCRIPTION", None)
        if description and module.SCENARIOS:
            system = module.SCENARIOS[0].system
            descriptions[system] = (descriptions.get(system, "") + "\n\n" + description).strip()
    return scenarios, broken, descriptions
