"""Chords (issue 4, "Speed and size"): a chord of 10,000 no-op members on SQLite and Redis.

    bench/out/venv/bin/python bench/chord.py [--runs N] [--only NAME[,NAME]] [--members N]
                                             [--write PATH] [--profile DIR]

For each broker (``chord-sqlite``, ``chord-redis``), each run, two phases, each with a
fresh broker (a new SQLite file, a new Redis key prefix) and its own worker process,
``python -m celeriac worker bench.chord:app -Q chord``, warmed up before the clock starts:

- **plain**: publish 10,000 ``chord.one`` (``async def``, returns 1), then await every
  result in turn: first publish -> last result, as the other end-to-end scenarios;
- **chord**: ``await app.start_async(chord(group(one.s() x 10,000), total.s()))``, then
  await its result (``total`` sums the list, so the result must be 10,000): from just
  before ``start_async`` (which stores the workflow and publishes the members) to the
  body's result.

The ratio chord / plain is the chord's cost per member relative to a plain task (target
under 2); the worker's CPU time per member and per plain task are given beside it, as
they are less sensitive to a busy machine than wall time.

``chord-size-sqlite`` and ``chord-size-redis`` measure the messages, on the broker's side:
the chord is started with no worker running and the 10,000 member messages are fetched
with a celeriac broker (``open_broker(url).fetch``), measured and given back (``nack``);
then a worker runs them, with the body routed to a queue it does not consume
(``total.s().set(queue="chord-body")``), so the body's message stays there once the router
publishes it, and is fetched and measured too. Every message of the chord is one of
these. The largest document the workflow stored in the sink (step records, outcomes,
results) is given as well: it is not a message, but it grows with the chord.

``--write PATH`` puts the table in PATH as its "## Chords" section (replacing it if
there). ``--profile DIR`` runs each worker under cProfile instead (one run; its profiles
in DIR, the top functions printed): the environment variable ``BENCH_CHORD_PROFILE=DIR``
does the same for any run. The module is also the app the workers load
(``bench.chord:app``) and has ``SCENARIOS`` like ``bench/systems/*``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: this checkout first, as bench/run.py does
    _ROOT = Path(__file__).resolve().parent.parent
    sys.path[:] = [p for p in sys.path if p != str(_ROOT / "bench")]
    for _path in (str(_ROOT), str(_ROOT / "src")):
        if _path in sys.path:
            sys.path.remove(_path)
        sys.path.insert(0, _path)

import argparse
import datetime
import os
import pstats
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from bench.harness import (
    ManagedProcess,
    Metric,
    Outcome,
    RunContext,
    Scenario,
    Target,
    python,
    run_scenario,
    say,
)
from bench.report import load_average
from bench.systems import redis_common as rc
from bench.systems.celeriac_common import (
    await_all,
    event_loop,
    run_async,
    stop_worker,
    watching,
)
from celeriac import App, Task, chord, group
from celeriac.abc import Broker, Delivery
from celeriac.brokers import Hub, open_broker
from celeriac.canvas import Chord, to_graph
from celeriac.canvas.graph import step_task_id
from celeriac.router.store import WorkflowStore
from celeriac.sinks import open_sink

__all__ = ["BODY_QUEUE", "ONE", "QUEUE", "SCENARIOS", "TOTAL", "app", "build", "main"]

QUEUE = "chord"
BODY_QUEUE = "chord-body"
"""Where the size scenarios send the body, so that no worker takes it."""
ONE = "chord.one"
TOTAL = "chord.total"

MEMBERS = int(os.environ.get("BENCH_CHORD_MEMBERS", "10000"))
"""Members of the timed chord, and plain tasks timed against it (``--members`` sets it)."""
WARM_UP_TASKS = 500
WARM_UP_MEMBERS = 200
"""A small chord run before the clock starts in the chord phase (router, coordinator)."""
PHASE_TIMEOUT = 300.0
MESSAGE_LIMIT = 4096
"""Issue 4: no message over 4 KiB, whatever the canvas's size."""
RATIO_LIMIT = 2.0
"""Issue 4: chord overhead per member under 2x a plain task's cost."""
PROFILE_ENV = "BENCH_CHORD_PROFILE"
SECTION = "## Chords"


# -- the app the workers load ----------------------------------------------------------


async def one() -> int:
    """A chord member: does nothing, returns 1 (so the body's sum counts the members)."""
    return 1


async def total(values: list[int]) -> int:
    """The chord's body: the sum of the members' results."""
    return sum(values)


def build(broker: str | None = None) -> App:
    """The chord bench's App on ``broker`` (default ``$CELERIAC_BROKER``); results beside it."""
    bench = App("chordbench", broker)
    bench.register(ONE, one, queue=QUEUE)
    bench.register(TOTAL, total, queue=QUEUE)
    return bench


app = build()


def _chord(members: int, first: Task[Any, Any], body: Task[Any, Any], **body_options: Any) -> Chord:
    return chord(group(first.s() for _ in range(members)), body.s().set(**body_options))


# -- where the broker is -----------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A broker the chord is measured on, and how the bench empties what it kept there."""

    name: str
    label: str
    url: Callable[[RunContext, str], str]
    """A fresh broker URL for one phase of a run (``plain``, ``chord``, ``size``)."""
    drop: Callable[[str], None]
    """Removes what the bench kept at that URL (called when the phase ends)."""


def _sqlite_url(ctx: RunContext, phase: str) -> str:
    return f"sqlite:///{ctx.tmpdir / f'{phase}.db'}"


def _redis_url(ctx: RunContext, phase: str) -> str:
    # celeriac's bench database, under a prefix of our own: nothing else is touched.
    return f"{rc.redis_url('celeriac')}?prefix=celeriac-chord-{phase}-{secrets.token_hex(4)}"


def _drop_redis_prefix(url: str) -> None:
    import redis

    prefix = url.rsplit("prefix=", 1)[1]
    client = redis.Redis(host=rc.HOST, port=rc.PORT, db=rc.DATABASES["celeriac"])
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


BACKENDS = (
    Backend("sqlite", "SQLite", _sqlite_url, lambda url: None),  # the run's tmpdir goes
    Backend("redis", "Redis", _redis_url, _drop_redis_prefix),
)


def _start_worker(ctx: RunContext, url: str, phase: str) -> ManagedProcess:
    """``python -m celeriac worker bench.chord:app -Q chord`` on ``url``.

    Under cProfile when ``$BENCH_CHORD_PROFILE`` names a directory (one file per
    scenario, run and phase; written when the worker exits).
    """
    command = [python()]
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        name = f"{ctx.scenario.name}-{phase}-run{ctx.index}.prof"
        command += ["-m", "cProfile", "-o", str(Path(profile_dir).resolve() / name)]
    command += ["-m", "celeriac", "--log-level", "WARNING", "--log-format", "json"]
    command += ["worker", "bench.chord:app", "-Q", QUEUE]
    process = ctx.spawn(f"worker-{phase}", command, ctx.subprocess_env(CELERIAC_BROKER=url))
    ctx.progress(f"{phase}: worker started (pid {process.pid})")
    return process


# -- time: a chord against as many plain tasks -----------------------------------------


def _phase(ctx: RunContext, backend: Backend, phase: str, members: int) -> dict[str, float]:
    """One timed phase (``plain`` or ``chord``) on a fresh broker and worker."""
    url = backend.url(ctx, phase)
    try:
        worker = _start_worker(ctx, url, phase)
        window = rc.Window(worker)
        started = {"seconds": 0.0}  # how long start_async took (the chord phase)

        async def main() -> None:
            bench = build(url)
            first, body = bench.tasks[ONE], bench.tasks[TOTAL]
            async with bench, watching(worker):
                with anyio.fail_after(PHASE_TIMEOUT):
                    await await_all([first.delay() for _ in range(WARM_UP_TASKS)])
                    if phase == "chord":
                        warm = _chord(WARM_UP_MEMBERS, first, body)
                        await (await bench.start_async(warm))
                ctx.progress(f"{phase}: worker warmed up; timing {members:,}")
                with anyio.fail_after(PHASE_TIMEOUT):
                    began = time.perf_counter()
                    window.start()
                    if phase == "plain":
                        await await_all([first.delay() for _ in range(members)])
                        value = members
                    else:
                        result = await bench.start_async(_chord(members, first, body))
                        started["seconds"] = time.perf_counter() - began
                        value = await result
                    window.stop()
                if value != members:
                    raise RuntimeError(f"the chord's body returned {value!r}, not {members}")

        run_async(main)
        stop_worker(worker)
        values = window.values(members)
        values["seconds"] = window.elapsed
        values["start"] = started["seconds"]
        return values
    finally:
        backend.drop(url)


def _timing(backend: Backend, members: int) -> Callable[[RunContext], dict[str, float]]:
    def repetition(ctx: RunContext) -> dict[str, float]:
        plain = _phase(ctx, backend, "plain", members)
        chorded = _phase(ctx, backend, "chord", members)
        return {
            "chord_s": chorded["seconds"],
            "start_s": chorded["start"],
            "plain_s": plain["seconds"],
            "ratio": chorded["seconds"] / plain["seconds"],
            "chord_worker_cpu": chorded["worker_cpu"],
            "plain_worker_cpu": plain["worker_cpu"],
            "cpu_ratio": chorded["worker_cpu"] / plain["worker_cpu"],
            "chord_producer_cpu": chorded["producer_cpu"],
            "plain_producer_cpu": plain["producer_cpu"],
            "cpu_wait": max(chorded["cpu_wait"], plain["cpu_wait"]),
        }

    return repetition


# -- size: every message of the chord, read on the broker's side ------------------------


async def _fetch(broker: Broker, queue: str, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    with anyio.fail_after(PHASE_TIMEOUT):
        while len(got) < count:
            got += await broker.fetch([queue], min(1000, count - len(got)), 1.0)
    return got


async def _largest_document(url: str, workflow: str, steps: int) -> int:
    """The largest body among the workflow's documents in the sink at ``url``."""
    ids = [WorkflowStore.meta_id(workflow), workflow]
    for n in range(steps):
        ids += [
            WorkflowStore.step_id(workflow, n),
            WorkflowStore.outcome_id(workflow, n),
            step_task_id(workflow, n),
        ]
    sink = open_sink(url, Hub())
    await sink.connect()
    try:
        largest = 0
        for start in range(0, len(ids), 1000):
            found = await sink.get(ids[start : start + 1000])
            largest = max([largest, *(len(doc.body) for doc in found.values())])
        return largest
    finally:
        await sink.close()


def _sizes(backend: Backend, members: int) -> Callable[[RunContext], dict[str, float]]:
    def repetition(ctx: RunContext) -> dict[str, float]:
        url = backend.url(ctx, "size")
        workflow = uuid.uuid4().hex

        async def main() -> dict[str, float]:
            bench = build(url)
            canvas = _chord(members, bench.tasks[ONE], bench.tasks[TOTAL], queue=BODY_QUEUE)
            steps = len(to_graph(canvas, workflow_id=workflow).steps)
            async with bench:
                await bench.start_async(canvas, workflow_id=workflow)
            broker = open_broker(url, Hub())
            await broker.connect()
            try:
                header = await _fetch(broker, QUEUE, members)
                await broker.nack(header)
                ctx.progress(f"{len(header):,} member messages measured; running them")
                worker = _start_worker(ctx, url, "size")
                async with watching(worker):
                    body = await _fetch(broker, BODY_QUEUE, 1)
                await broker.ack(body)
                stop_worker(worker)
            finally:
                await broker.close()
            member_bytes = max(len(d.body) for d in header)
            body_bytes = max(len(d.body) for d in body)
            return {
                "member_bytes": member_bytes,
                "body_bytes": body_bytes,
                "largest_bytes": max(member_bytes, body_bytes),
                "document_bytes": await _largest_document(url, workflow, steps),
            }

        try:
            return run_async(main)
        finally:
            backend.drop(url)

    return repetition


# -- scenarios --------------------------------------------------------------------------


def _metric(key: str, label: str, unit: str, workload: str, **options: Any) -> Metric:
    return Metric(key=key, label=label, unit=unit, workload=workload, **options)


def _timing_metrics(b: Backend, members: int) -> tuple[Metric, ...]:
    w, label = f"chord.{b.name}", b.label
    return (
        _metric(
            "chord_s",
            f"{label}: chord of {members:,} no-op members, start -> body's result",
            "s",
            f"{w}.time",
            higher_is_better=False,
        ),
        _info(
            "start_s",
            f"{label}: of which start_async (stores the workflow, publishes the members)",
            "s",
            w,
        ),
        _metric(
            "plain_s",
            f"{label}: {members:,} plain no-op tasks, first publish -> last result",
            "s",
            f"{w}.plain",
            higher_is_better=False,
        ),
        _metric(
            "ratio",
            f"{label}: chord time / plain time (cost per member vs a plain task)",
            "x",
            f"{w}.ratio",
            higher_is_better=False,
            target=Target(RATIO_LIMIT, at_least=False),
            decimals=2,
        ),
        _info("chord_worker_cpu", f"{label}: worker CPU per chord member", "µs", w),
        _info("plain_worker_cpu", f"{label}: worker CPU per plain task", "µs", w),
        _info(
            "cpu_ratio",
            f"{label}: worker CPU per chord member / per plain task",
            "x",
            w,
            decimals=2,
        ),
        _info(
            "chord_producer_cpu",
            f"{label}: producer CPU per chord member (start_async + await)",
            "µs",
            w,
        ),
        _info(
            "plain_producer_cpu",
            f"{label}: producer CPU per plain task (publish + await)",
            "µs",
            w,
        ),
        _info(
            "cpu_wait",
            f"{label}: time runnable but waiting for a CPU (worker + producer, worse phase)",
            "% of wall",
            w,
            decimals=1,
        ),
    )


def _size_metrics(b: Backend, members: int) -> tuple[Metric, ...]:
    w, label = f"chord.{b.name}", b.label
    return (
        _info("member_bytes", f"{label}: largest member message of the chord", "bytes", w),
        _info("body_bytes", f"{label}: the body's message", "bytes", w),
        _metric(
            "largest_bytes",
            f"{label}: largest message published for the chord",
            "bytes",
            f"{w}.largest_bytes",
            higher_is_better=False,
            target=Target(MESSAGE_LIMIT + 1, at_least=False),  # at most 4 KiB
        ),
        _info(
            "document_bytes",
            f"{label}: largest document the workflow stored (not a message)",
            "bytes",
            w,
        ),
    )


def _info(key: str, label: str, unit: str, workload: str, **options: Any) -> Metric:
    return _metric(
        key, label, unit, f"{workload}.{key}", higher_is_better=False, informational=True, **options
    )


def scenarios(members: int = MEMBERS) -> list[Scenario]:
    """``chord-<broker>`` (time) and ``chord-size-<broker>`` (messages) for each broker."""
    found = []
    for b in BACKENDS:
        found += [
            Scenario(
                f"chord-{b.name}",
                "celeriac",
                f"{b.label}, chord of {members:,} no-ops + summing body vs {members:,} plain"
                " no-ops, 1 worker process",
                _timing_metrics(b, members),
                _timing(b, members),
            ),
            Scenario(
                f"chord-size-{b.name}",
                "celeriac",
                f"{b.label}, the messages of a chord of {members:,} members, read from the broker",
                _size_metrics(b, members),
                _sizes(b, members),
            ),
        ]
    return found


SCENARIOS = scenarios()


# -- the command line -------------------------------------------------------------------


def _target(metric: Metric, median: float) -> str:
    if metric.target is None:
        return ""
    if metric.key == "largest_bytes":
        text = f"≤ {MESSAGE_LIMIT:,}"
    else:
        text = f"{'≥' if metric.target.at_least else '<'} {metric.format(metric.target.bound)}"
    return f"{text}: {'met' if metric.target.met(median) else '**missed**'}"


def section(outcomes: Sequence[Outcome], runs: int, command: str, started: str) -> str:
    """The "## Chords" section of RESULTS.md: one row per metric, median and min-max."""
    lines = [
        SECTION,
        "",
        f"Written by `{command}` on {started} (load average {load_average()} at the end);"
        f" median of {runs} run{'s' * (runs != 1)}, min-max beside it. What is measured and"
        " what the numbers mean: bench/README.md, *Chords*.",
        "",
        "| scenario | value | unit | runs | min-max | target |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    failures = []
    for outcome in outcomes:
        for metric in outcome.scenario.metrics:
            samples = outcome.samples.get(metric.key, [])
            if outcome.error is not None or not samples:
                lines.append(f"| {metric.label} | FAILED | {metric.unit} | 0 | — | |")
                continue
            median = statistics.median(samples)
            spread = f"{metric.format(min(samples))}-{metric.format(max(samples))}"
            cells = [metric.label, metric.format(median), metric.unit, str(len(samples))]
            cells += [spread, _target(metric, median)]
            lines.append("| " + " | ".join(cells) + " |")
        if outcome.error is not None:
            failures.append(f"- `{outcome.scenario.name}`: {outcome.error[:600]}")
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` in ``path`` as its "## Chords" section: replaced if there, else appended."""
    old = path.read_text() if path.exists() else ""
    start = old.find(f"\n{SECTION}\n")
    if start == -1:
        new = old.rstrip("\n") + "\n\n" + text if old else text
    else:
        after = old.find("\n## ", start + len(SECTION) + 2)
        rest = old[after:] if after != -1 else ""
        new = old[: start + 1] + text + rest
    path.write_text(new)


def _show_profiles(directory: Path, top: int = 30) -> None:
    for file in sorted(directory.glob("*.prof")):
        say(f"\n=== {file.name}: top {top} by own time")
        stats = pstats.Stats(str(file))
        stats.sort_stats("tottime").print_stats(top)
        say(f"=== {file.name}: top {top} by cumulative time")
        stats.sort_stats("cumulative").print_stats(top)


def main(argv: Sequence[str]) -> int:
    """Run the chord scenarios, print the section, optionally write it (exit 1 on a failure)."""
    parser = argparse.ArgumentParser(prog="bench/chord.py", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--only", help="scenario names or prefixes, comma-separated")
    parser.add_argument("--members", type=int, default=MEMBERS, help="chord size (10,000)")
    parser.add_argument("--write", type=Path, help="put the table in this file (## Chords)")
    parser.add_argument("--profile", type=Path, help="cProfile the workers into this directory")
    args = parser.parse_args(argv)
    chosen = scenarios(args.members)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ[PROFILE_ENV] = str(args.profile)
        args.runs = 1
        chosen = [s for s in chosen if "size" not in s.name]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        chosen = [s for s in chosen if any(s.name.startswith(w) for w in wanted)]
    if not chosen:
        say("no scenario chosen (names: " + ", ".join(s.name for s in scenarios()) + ")")
        return 2
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    say(f"chord bench: {len(chosen)} scenario(s), {args.runs} run(s) each, {event_loop()}")
    outcomes = [run_scenario(s, args.runs, f"[{i}/{len(chosen)}]") for i, s in enumerate(chosen, 1)]
    command = "bench/out/venv/bin/python bench/chord.py"
    given = " ".join(argv)
    text = section(outcomes, args.runs, f"{command} {given}".strip(), started)
    say("\n" + text)
    if args.write is not None:
        write_section(args.write, text)
        say(f"wrote the {SECTION!r} section of {args.write}")
    if args.profile is not None:
        _show_profiles(args.profile)
    return 1 if any(o.error is not None for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
