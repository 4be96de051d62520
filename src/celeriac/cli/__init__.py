"""The ``celeriac`` command line (click).

Every command takes the app as its first argument (``module:attribute``, or
``module`` holding exactly one App), or reads it from ``$CELERIAC_APP``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from celeriac import __version__
from celeriac.app import App
from celeriac.cli.dlq import dlq
from celeriac.cli.loading import AppParam
from celeriac.cli.running import load_callable, run_worker
from celeriac.errors import CeleriacError
from celeriac.observability import configure_logging

__all__ = ["main"]

APP = AppParam()
F = TypeVar("F", bound=Callable[..., Any])


def _app_argument() -> Callable[[F], F]:
    return click.argument("app", type=APP, envvar="CELERIAC_APP")


def _csv(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="JSON lines, or console lines (auto: console on a terminal).",
)
@click.version_option(version=__version__, prog_name="celeriac")
def main(log_level: str, log_format: str) -> None:
    """celeriac: async-native distributed task execution."""
    configure_logging(log_level, log_format)  # type: ignore[arg-type]


def _worker_options(fn: F) -> F:
    options = [
        click.option("-Q", "--queues", help="Comma-separated queues (default: all the app's)."),
        click.option(
            "-c",
            "--concurrency",
            type=click.IntRange(min=1),
            help="Threads and boxes (default 10 / CPUs).",
        ),
        click.option(
            "--async-concurrency",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Coroutine tasks at once.",
        ),
        click.option("--prefetch", type=click.IntRange(min=1), help="Deliveries held at once."),
        click.option("-n", "--name", help="Worker name (default: app@host:pid)."),
        click.option(
            "--grace",
            type=float,
            default=30.0,
            show_default=True,
            help="Seconds running tasks get to finish on SIGTERM.",
        ),
        click.option(
            "--loop",
            type=click.Choice(["asyncio", "trio"]),
            default="asyncio",
            show_default=True,
            help="Event loop (asyncio uses uvloop when installed).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@_app_argument()
@_worker_options
def worker(
    app: App,
    queues: str | None,
    concurrency: int | None,
    async_concurrency: int,
    prefetch: int | None,
    name: str | None,
    grace: float,
    loop: str,
) -> None:
    """Run a worker: consume the app's queues and run its tasks."""
    code = run_worker(
        app,
        loop=loop,
        queues=_csv(queues),
        concurrency=concurrency,
        async_concurrency=async_concurrency,
        prefetch=prefetch,
        name=name,
        grace=grace,
    )
    sys.exit(code)


@main.command()
@_app_argument()
@click.option(
    "--run", "program", help="module:function to run once the worker is ready; exit after."
)
@_worker_options
def dev(
    app: App,
    program: str | None,
    queues: str | None,
    concurrency: int | None,
    async_concurrency: int,
    prefetch: int | None,
    name: str | None,
    grace: float,
    loop: str,
) -> None:
    """Everything in one process: a worker, the periodic scheduler, and your program.

    With --run, the function is called with the app once the worker is ready
    (async functions on the worker's loop, others in a thread); when it returns,
    the worker stops gracefully and the command exits.
    """
    code = run_worker(
        app,
        loop=loop,
        program=load_callable(program) if program else None,
        periodic=True,
        queues=_csv(queues),
        concurrency=concurrency,
        async_concurrency=async_concurrency,
        prefetch=prefetch,
        name=name,
        grace=grace,
    )
    app.close()
    sys.exit(code)


@main.command()
@_app_argument()
@click.option("-n", "--name", help="Scheduler name in claims and logs (default: host:pid:random).")
@click.option(
    "--loop",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="Event loop.",
)
@click.option(
    "--autoscale-interval",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds between autoscaling samples (0: no autoscaling signals).",
)
@click.option(
    "--min-workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Never advise fewer workers.",
)
@click.option(
    "--max-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Never advise more workers.  [default: no bound]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve the autoscaling signals as Prometheus metrics on this port (needs "
    "celeriac[metrics]).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of the metrics server."
)
def scheduler(
    app: App,
    name: str | None,
    loop: str,
    autoscale_interval: float,
    min_workers: int,
    max_workers: int | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Publish periodic tasks on time and autoscaling signals (run several for availability).

    Each tick is published once however many schedulers run; one of them leads
    the autoscaling signals at a time.
    """
    from celeriac.cli.scheduling import Scaling, run_scheduler

    scaling = (
        Scaling(
            interval=autoscale_interval,
            min_workers=min_workers,
            max_workers=max_workers,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        if autoscale_interval > 0
        else None
    )
    sys.exit(run_scheduler(app, loop=loop, name=name, scaling=scaling))


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@main.command()
@_app_argument()
@click.argument("task_name")
@click.argument("args", nargs=-1)
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@click.option("--countdown", type=float, help="Run no sooner than this many seconds from now.")
@click.option("--queue", help="Queue to publish to.")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher first.")
@click.option("--no-wait", is_flag=True, help="Print the task id and exit.")
def call(
    app: App,
    task_name: str,
    args: tuple[str, ...],
    kwargs_json: str | None,
    timeout: float,
    countdown: float | None,
    queue: str | None,
    priority: int | None,
    no_wait: bool,
) -> None:
    """Publish TASK_NAME with ARGS (JSON, else strings), wait, and print the result as JSON."""
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--kwargs") from None
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    result = app.send_task(
        task_name,
        [_parse_arg(a) for a in args],
        kwargs,
        countdown=countdown,
        queue=queue,
        priority=priority,
    )
    if no_wait:
        app.close()
        click.echo(result.id)
        return
    try:
        value = result.get(timeout=timeout)
    except CeleriacError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        click.echo(f"task failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        app.close()
    click.echo(json.dumps(value))


@main.command()
@_app_argument()
@click.argument("task_name")
def suspend(app: App, task_name: str) -> None:
    """Suspend a task on every worker: its messages wait until it is resumed."""
    _suspend(app, task_name, True)


@main.command()
@_app_argument()
@click.argument("task_name")
def resume(app: App, task_name: str) -> None:
    """Resume a task suspended with ``celeriac suspend``."""
    _suspend(app, task_name, False)


def _suspend(app: App, name: str, suspended: bool) -> None:
    if name not in app.tasks:
        click.echo(f"warning: {name!r} is not a task of this app (recorded anyway)", err=True)
    app._bridge.call_sync(app._set_suspended, name, suspended)
    app.close()
    click.echo(f"{name}: {'suspended' if suspended else 'resumed'}")


@main.command()
@_app_argument()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(app: App, as_json: bool) -> None:
    """What is queued, what runs, and which workers are alive."""
    info = app._bridge.call_sync(app._status)
    app.close()
    queues = {
        name: {"ready": s.ready, "delayed": s.delayed, "in_flight": s.in_flight}
        for name, s in info["queues"].items()
    }
    workers = [
        {
            "name": w.name,
            "host": w.host,
            "pid": w.pid,
            "queues": w.queues,
            "running": w.running,
            "processed": w.processed,
            "failed": w.failed,
            "loop": w.loop,
            "seen": round(time.time() - w.seen_at, 1),
        }
        for w in info["workers"]
    ]
    if as_json:
        click.echo(
            json.dumps({"broker": app.broker_url, "queues": queues, "workers": workers}, indent=2)
        )
        return
    click.echo(f"broker  {app.broker_url}")
    click.echo("queues")
    if not queues:
        click.echo("  (none)")
    for name, q in sorted(queues.items()):
        click.echo(
            f"  {name:<20} ready {q['ready']:>7}  delayed {q['delayed']:>7}"
            f"  in flight {q['in_flight']:>7}"
        )
    click.echo(f"workers ({len(workers)} alive)")
    for w in workers:
        click.echo(
            f"  {w['name']:<40} running {w['running']:>4}  processed {w['processed']:>8}  "
            f"failed {w['failed']:>6}  {w['loop']}  seen {w['seen']}s ago"
        )


main.add_command(dlq)
