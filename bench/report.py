"""The results table (markdown) and the description of the machine it was measured on."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.harness import ROOT, Metric, Outcome, format_value

PEER_PACKAGES = (
    "celery",
    "kombu",
    "gevent",
    "dramatiq",
    "arq",
    "taskiq",
    "taskiq-redis",
    "huey",
    "rq",
    "redis",
    "hiredis",
    "aio-pika",
    "nats-py",
    "asyncpg",
)
"""Packages whose versions RESULTS.md gives when installed (the peers and the clients)."""

__all__ = ["environment", "render"]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (how busy the machine was)."""
    if not hasattr(os, "getloadavg"):
        return "?"
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _command() -> str:
    """How the bench was started: ``./dev bench ...`` (set by ./dev) and the interpreter's argv."""
    argv = shlex.join(sys.orig_argv)
    given = os.environ.get("CELERIAC_BENCH_COMMAND")
    return f"{given} (that is, {argv})" if given else argv


def environment(event_loop: str) -> dict[str, str]:
    """What the numbers depend on, as label -> text."""
    import celeriac

    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--", "src"):
        commit += " + uncommitted changes under src/"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _command(),
        "celeriac": f"{celeriac.__version__} ({commit or 'no git'})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "anyio": _version("anyio"),
        "msgspec": _version("msgspec"),
        "uvloop": _version("uvloop"),
        "trio": _version("trio"),
        "event loop": event_loop,
        "CPUs": f"{os.cpu_count()} ({usable} usable), {_cpu_model()}",
        "load average at start": load_average(),
        "OS": platform.platform(),
        **_peer_versions(),
    }


def _peer_versions() -> dict[str, str]:
    """The installed peers' versions, redis-py's, and the Redis server's (when reachable)."""
    found = {p: _version(p) for p in PEER_PACKAGES}
    found = {p: v for p, v in found.items() if v != "not installed"}
    if not found:
        return {}
    found = {("redis-py" if p == "redis" else p): v for p, v in found.items()}
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
        try:
            info = client.info("server")
        finally:
            client.close()
        found["Redis server"] = f"{info['redis_version']} at 127.0.0.1:6379"
    except Exception as exc:  # the table still gets written
        found["Redis server"] = f"not reachable ({type(exc).__name__})"
    return found


def _spread(metric: Metric, samples: Sequence[float], median: float) -> str:
    low, high = min(samples), max(samples)
    if len(samples) < 2:
        return "—"
    text = f"{metric.format(low)}-{metric.format(high)}"
    half = (high - low) / 2 / median * 100 if median else float("inf")
    # Relative to a median near zero the percentage says nothing: leave it out.
    near_zero = float(metric.format(median).replace(",", "")) == 0
    return text if half > 100 or near_zero else f"{text} (±{half:.0f}%)"


def _target(metric: Metric, median: float | None) -> str:
    if metric.target is None:
        return "info" if metric.informational else ""
    sign = "≥" if metric.target.at_least else "<"
    text = f"{sign} {format_value(metric.target.bound)}"
    if median is None:
        return text
    return f"{text}: {'met' if metric.target.met(median) else '**missed**'}"


def _medians(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """workload -> system -> median, for the scenarios that did not fail."""
    medians: dict[str, dict[str, float]] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            continue
        for metric in outcome.scenario.metrics:
            medians.setdefault(metric.workload, {})[outcome.scenario.system] = outcome.median(
                metric.key
            )
    return medians


def _best_peer(metric: Metric, by_system: Mapping[str, float]) -> tuple[str, float] | None:
    peers = [(s, v) for s, v in by_system.items() if s != "celeriac"]
    if not peers:
        return None
    pick = max if metric.higher_is_better else min
    return pick(peers, key=lambda item: item[1])


def _peer_target(
    metric: Metric, median: float | None, by_system: Mapping[str, float]
) -> tuple[str, bool | None]:
    """The target cell of celeriac's row for a goal relative to the peers, and whether met."""
    assert metric.peer_target is not None
    goal = metric.peer_target
    factor = "" if goal.factor == 1 else f"{goal.factor:g}x "
    if metric.higher_is_better:
        text = f"≥ {factor}best peer"
    else:
        text = f"< {factor}every peer" if goal.factor == 1 else f"< {factor}best peer"
    best = _best_peer(metric, by_system)
    if best is None:
        return f"{text} (no peer measured)", None
    system, value = best
    text += f" ({system} {metric.format(value)})"
    if median is None:
        return text, None
    met = goal.met(median, value, metric.higher_is_better)
    return f"{text}: {'met' if met else '**missed**'}", met


def _ratios(outcomes: Sequence[Outcome]) -> dict[tuple[str, str], str]:
    """(system, workload) -> "xR" against celeriac, where a peer measured the workload."""
    medians = _medians(outcomes)
    ratios = {}
    for workload, by_system in medians.items():
        base = by_system.get("celeriac")
        if len(by_system) < 2 or not base:
            continue
        for system, value in by_system.items():
            ratios[(system, workload)] = f"x{value / base:.2f}"
    return ratios


def render(
    outcomes: Sequence[Outcome],
    env: Mapping[str, str],
    *,
    runs: int,
    seconds: float,
    skipped: Mapping[str, str],
    descriptions: Mapping[str, str] | None = None,
) -> str:
    """RESULTS.md: the table, the failures, how each system ran, and the environment.

    Rows of one workload stay together (celeriac's, then each peer's), in the order
    the workloads first appear.
    """
    ratios = _ratios(outcomes)
    medians = _medians(outcomes)
    order: dict[str, int] = {}
    for outcome in outcomes:
        for metric in outcome.scenario.metrics:
            order.setdefault(metric.workload, len(order))
    peer_goals: list[str] = []
    peers = bool(ratios)
    header = ["scenario", "value", "unit", "runs", "spread (min-max)", "target"]
    align = ["---", "---:", "---", "---:", "---", "---"]
    if peers:
        header[1:1] = ["system"]
        align[1:1] = ["---"]
        header.append("vs celeriac")
        align.append("---:")
    lines = [
        "# celeriac benchmark results",
        "",
        f"Written by `{env['command']}` on {env['date']}. Each value is the median of "
        f"{runs} run{'s' * (runs != 1)} (see bench/README.md for what each scenario measures);"
        " spread is the min-max over the runs and ± half that range relative to the median.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    failures = []
    rows: list[tuple[int, int, str]] = []
    for outcome in outcomes:
        scenario = outcome.scenario
        for metric in scenario.metrics:
            by_system = medians.get(metric.workload, {})
            if outcome.error is not None:
                cells = [metric.label, "FAILED", metric.unit, str(outcome.runs), "—"]
                if metric.peer_target is not None:
                    goal, _ = _peer_target(metric, None, by_system)
                    cells.append(goal)
                    peer_goals.append(f"- {metric.label}: {goal}: **not measured** (FAILED)")
                else:
                    cells.append(_target(metric, None))
            elif metric.peer_target is not None:
                samples = outcome.samples[metric.key]
                median = outcome.median(metric.key)
                goal, _ = _peer_target(metric, median, by_system)
                cells = [
                    metric.label,
                    metric.format(median),
                    metric.unit,
                    str(len(samples)),
                    _spread(metric, samples, median),
                    goal,
                ]
                peer_goals.append(
                    f"- {metric.label}: celeriac {metric.format(median)} {metric.unit}, {goal}"
                )
            else:
                samples = outcome.samples[metric.key]
                median = outcome.median(metric.key)
                cells = [
                    metric.label,
                    metric.format(median),
                    metric.unit,
                    str(len(samples)),
                    _spread(metric, samples, median),
                    _target(metric, median),
                ]
            if peers:
                cells[1:1] = [scenario.system]
                ratio = ratios.get((scenario.system, metric.workload), "")
                cells.append(ratio if outcome.error is None else "")
            line = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
            rows.append((order[metric.workload], len(rows), line))
        if outcome.error is not None:
            failures.append(f"- `{scenario.name}` ({scenario.system}): {outcome.error[:600]}")
    lines += [line for _, _, line in sorted(rows)]
    if peer_goals:
        lines += ["", "## celeriac against the peers", "", *peer_goals]
    if failures:
        lines += ["", "## Failures", "", *failures]
    if skipped:
        lines += ["", "## Systems not run", ""]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    if descriptions and set(descriptions) - {"celeriac"}:
        lines += ["", "## How each system was run"]
        for system, text in descriptions.items():
            lines += ["", f"### {system}", "", text.strip()]
    lines += ["", "## Environment", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    lines.append(f"| bench wall time | {seconds:.0f} s |")
    return "\n".join(lines) + "\n"
