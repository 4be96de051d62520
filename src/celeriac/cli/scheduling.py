"""``celeriac scheduler APP``: periodic ticks and autoscaling signals, as a process.

Run as many as you like for availability: they publish each tick once between
them (see :mod:`celeriac.scheduler.runner`). SIGTERM or SIGINT stops it (ticks
being published get a lease's time to be accepted); a second one stops it at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal

import anyio
import click

from celeriac.app import App
from celeriac.coordination import open_coordinator
from celeriac.errors import ConfigurationError
from celeriac.scheduler.autoscale import Autoscaler
from celeriac.scheduler.runner import PeriodicScheduler
from celeriac.scheduler.scaling import AutoscaleSignals

__all__ = ["Scaling", "run_scheduler"]

log = logging.getLogger("celeriac.cli")


@dataclasses.dataclass(frozen=True)
class Scaling:
    """The autoscaling options of ``celeriac scheduler``."""

    interval: float = 5.0
    min_workers: int = 1
    max_workers: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


async def _watch_signals(
    scheduler: PeriodicScheduler, signals_: AutoscaleSignals | None, scope: anyio.CancelScope
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        count = 0
        async for signum in signals:
            name, count = signal.Signals(signum).name, count + 1
            if count > 1:
                log.warning("%s again: stopping now", name)
                scope.cancel()
                return
            log.warning("%s: stopping (send it again to stop at once)", name)
            scheduler.request_stop()
            if signals_ is not None:
                signals_.request_stop()


def run_scheduler(
    app: App, *, loop: str, name: str | None = None, scaling: Scaling | None = None
) -> int:
    """Run a :class:`PeriodicScheduler` (and, with ``scaling``, the autoscaling signals)
    for ``app`` until SIGTERM/SIGINT; the exit code."""
    try:
        coordinator = open_coordinator(app.coordinator_url, app.hub)
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    metrics = None
    if scaling is not None and scaling.metrics_port is not None:
        try:
            from celeriac.observability.metrics import AutoscaleMetrics
        except ImportError as exc:
            click.echo(f"error: --metrics-port needs celeriac[metrics] ({exc})", err=True)
            return 1
        metrics = AutoscaleMetrics()

    async def main() -> None:
        scheduler = PeriodicScheduler(app, coordinator, name=name)
        signals_ = None
        if scaling is not None:
            autoscaler = Autoscaler(
                min_workers=scaling.min_workers, max_workers=scaling.max_workers
            )
            signals_ = AutoscaleSignals(
                app,
                coordinator,
                name=scheduler.name,
                interval=scaling.interval,
                autoscaler=autoscaler,
                metrics=metrics,
            )
        await coordinator.connect()
        server = None
        try:
            if metrics is not None and scaling is not None and scaling.metrics_port is not None:
                server = metrics.serve(scaling.metrics_port, scaling.metrics_host)
                log.info("metrics on http://%s:%d/metrics", server.host, server.port)
            async with app, anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, scheduler, signals_, tg.cancel_scope)
                async with anyio.create_task_group() as work:
                    if signals_ is not None:
                        await work.start(signals_.run)
                    await scheduler.run()
                    if signals_ is not None:
                        signals_.request_stop()  # it hands its lead over, then returns
                tg.cancel_scope.cancel()
        finally:
            if server is not None:
                server.close()
            with anyio.CancelScope(shield=True):
                await coordinator.close()

    anyio.run(main, backend=loop)
    return 0
