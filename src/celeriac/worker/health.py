"""The worker's health checks (CEP "Health Checks"): run on time, logged, fed to breakers.

Every check of the app (``@app.health_check``), every check a task's circuit
breaker names, and one built-in check per broker and per sink connection (a cheap
read, every 30 s) run here, each on its own period. A check that raises or runs past
its time limit reports ``UNHEALTHY`` and the error is logged; it never stops the
worker. State changes are logged (a warning when it leaves ``HEALTHY``, info when
it comes back), and every report goes to the breakers of the tasks that name it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from celeriac.abc import Broker, DataSink
from celeriac.failures.health import HealthCheck, HealthState, run_check

if TYPE_CHECKING:
    from celeriac.tasks.task import Task
    from celeriac.worker.suspend import Suspensions

__all__ = ["HealthMonitor", "connection_checks"]

log = logging.getLogger("celeriac.health")

CONNECTION_EVERY = 30.0


def connection_checks(
    brokers: Mapping[str, Broker], sinks: Mapping[str, DataSink]
) -> list[HealthCheck]:
    """One check per broker (``stats()``) and per sink (a ``get`` of nothing in particular)."""

    def broker_check(broker: Broker) -> HealthCheck:
        async def probe() -> HealthState:
            await broker.stats()
            return HealthState.HEALTHY

        return HealthCheck(f"broker {_label(broker)}", probe, every=CONNECTION_EVERY, timeout=10)

    def sink_check(name: str, sink: DataSink) -> HealthCheck:
        async def probe() -> HealthState:
            await sink.get(["celeriac-health-probe"])
            return HealthState.HEALTHY

        return HealthCheck(f"sink {name}", probe, every=CONNECTION_EVERY, timeout=10)

    return [broker_check(b) for b in brokers.values()] + [
        sink_check(n, s) for n, s in sinks.items()
    ]


def _label(backend: object) -> str:
    return repr(backend).strip("<>")


class HealthMonitor:
    """Runs health checks on their periods and reports what they say."""

    def __init__(
        self,
        checks: Sequence[HealthCheck],
        tasks: Sequence[Task[..., object]],
        suspensions: Suspensions,
    ) -> None:
        unique: dict[str, HealthCheck] = {}
        for check in checks:
            unique.setdefault(check.name, check)
        self.checks = unique
        self.tasks = list(tasks)
        self.suspensions = suspensions

    def states(self) -> dict[str, str]:
        """Check name -> its last state (``"pending"`` before its first run)."""
        return {
            name: check.state.name if check.state is not None else "pending"
            for name, check in self.checks.items()
        }

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the checks until cancelled."""
        task_status.started()
        if not self.checks:
            await anyio.sleep_forever()
        while True:
            now = time.monotonic()
            due = [c for c in self.checks.values() if c.due(now)]
            if due:
                async with anyio.create_task_group() as tg:
                    for check in due:
                        tg.start_soon(self._run_one, check, now)
            now = time.monotonic()
            next_at = min((c.last_run or now) + c.every for c in self.checks.values())
            await anyio.sleep(max(0.05, next_at - now))

    async def _run_one(self, check: HealthCheck, now: float) -> None:
        before = check.state
        done = await run_check(check, now)
        self.checks[check.name] = done
        state = done.state or HealthState.UNHEALTHY
        if state is not before:
            if state is HealthState.HEALTHY:
                log.info("health check %s: HEALTHY", check.name)
            else:
                detail = f" ({done.error})" if done.error else ""
                log.warning("health check %s: %s%s", check.name, state.name, detail)
        self.suspensions.health(self.tasks, check.name, state)
