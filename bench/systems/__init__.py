"""One module per system measured. Each exposes ``SCENARIOS``, a list of
:class:`bench.harness.Scenario`.

To add a peer (Celery, Dramatiq, arq, Taskiq, Huey, RQ...), write
``bench/systems/<peer>_<broker>.py`` whose scenarios reuse celeriac's ``workload``
keys for the same measurements (so the report shows ratios), and list it in
``MODULES``. A module that fails to import (its client is not installed) is
reported and skipped; the others still run.
"""

from __future__ import annotations

import importlib

from bench.harness import Scenario, say

__all__ = ["MODULES", "load_scenarios"]

MODULES = [
    "bench.systems.celeriac_sqlite",
    "bench.systems.celeriac_memory",
]


def load_scenarios() -> tuple[list[Scenario], dict[str, str]]:
    """Every scenario of every importable system module, and the import errors of the rest."""
    scenarios: list[Scenario] = []
    broken: dict[str, str] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            broken[name] = f"{type(exc).__name__}: {exc}"
            say(f"skipping {name}: {broken[name]}")
            continue
        scenarios.extend(module.SCENARIOS)
    return scenarios, broken
