"""The benchmark harness: scenarios, repetitions, statistics, managed subprocesses.

A *scenario* is one setup measured by one system (celeriac now; peers later),
run ``runs`` times. Each repetition is a plain callable that gets a fresh
:class:`RunContext` (its own temporary directory, a progress printer, managed
subprocesses) and returns a value for each of the scenario's metrics. The
harness takes the median and the min-max of each metric over the repetitions.

Metrics carry a ``workload`` key that is the same for every system measuring
the same thing, so a peer's row can be lined up with celeriac's (ratios).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ROOT",
    "Metric",
    "Outcome",
    "PeerTarget",
    "RunContext",
    "Scenario",
    "Target",
    "ManagedProcess",
    "cpu_wait_seconds",
    "percentile",
    "run_interleaved",
    "run_scenario",
]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """A goal from an issue: ``value >= bound`` (``at_least``) or ``value < bound``."""

    bound: float
    at_least: bool = True

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value < self.bound


@dataclass(frozen=True)
class PeerTarget:
    """A goal against the peers, for celeriac's row of a workload the peers also measure.

    Higher is better: celeriac's median at least ``factor`` times the best peer's.
    Lower is better: below ``factor`` times the best (lowest) peer's, so below every peer's.
    """

    factor: float = 1.0

    def bound(self, best_peer: float) -> float:
        return self.factor * best_peer

    def met(self, value: float, best_peer: float, higher_is_better: bool) -> bool:
        if higher_is_better:
            return value >= self.bound(best_peer)
        return value < self.bound(best_peer)


@dataclass(frozen=True)
class Metric:
    """One number a scenario reports."""

    key: str
    """Key in the dict a repetition returns."""
    label: str
    """The table's scenario column."""
    unit: str
    workload: str
    """Same for every system measuring the same thing (for ratios against peers)."""
    higher_is_better: bool = True
    target: Target | None = None
    informational: bool = False
    decimals: int | None = None
    """Fixed decimals in the table (default: see :func:`format_value`)."""
    peer_target: PeerTarget | None = None
    """A goal relative to the peers' results for the same workload (celeriac's rows)."""

    def format(self, value: float) -> str:
        return format_value(value) if self.decimals is None else f"{value:,.{self.decimals}f}"


@dataclass(frozen=True)
class Scenario:
    """A setup, measured by one system, repeated; see the module docstring."""

    name: str
    """What ``--only`` matches."""
    system: str
    title: str
    metrics: tuple[Metric, ...]
    repetition: Callable[[RunContext], Mapping[str, float]]
    timeout: float = 600.0
    """Seconds one repetition may take before it counts as failed."""
    group: str | None = None
    """Scenarios of the same group (one workload, measured by several systems) run
    interleaved: run 1 of each, then run 2 of each..., so a change in the machine's
    load during the bench falls on every system alike."""


@dataclass
class Outcome:
    """What the harness learned from a scenario's repetitions."""

    scenario: Scenario
    samples: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def runs(self) -> int:
        return min((len(v) for v in self.samples.values()), default=0)

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_wait_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU.

    From ``/proc/<pid>/task/*/schedstat`` (the second field, in ns): on a busy
    machine this grows, so it tells a slow run caused by other processes from a
    slow celeriac. Threads that have exited are no longer counted. 0.0 where
    the kernel does not provide it.
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def say(message: str) -> None:
    """Progress line on stdout, at once."""
    print(message, flush=True)


class ManagedProcess:
    """A subprocess that is always stopped: SIGTERM, a wait, then SIGKILL.

    Its stdout and stderr go to a log file, whose tail is shown when it fails.
    """

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path
    ) -> None:
        self.args = list(args)
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            self.args, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def peak_rss_bytes(self) -> int:
        """The process's peak resident set (``VmHWM`` in ``/proc/<pid>/status``)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                number, unit = line.split()[1:3]
                if unit != "kB":
                    raise RuntimeError(f"unexpected VmHWM unit {unit!r}")
                return int(number) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (``/proc/<pid>/stat``)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def check_alive(self, what: str = "process") -> None:
        """Raise, with its log's tail, if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"the {what} exited with code {code}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        self.exit_code = self.popen.returncode
        return self.exit_code


class RunContext:
    """What one repetition gets: a fresh directory, progress output, subprocesses."""

    def __init__(self, scenario: Scenario, index: int, total: int, tmpdir: Path) -> None:
        self.scenario = scenario
        self.index = index
        self.total = total
        self.tmpdir = tmpdir
        self.root = ROOT
        self._processes: list[ManagedProcess] = []

    def progress(self, message: str) -> None:
        say(f"    run {self.index}/{self.total}: {message}")

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """This environment, with this checkout importable first, plus ``extra``."""
        env = dict(os.environ)
        paths = [str(ROOT / "src"), str(ROOT)]
        paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(extra)
        return env

    def spawn(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> ManagedProcess:
        """Start a subprocess that is stopped (SIGTERM, then SIGKILL) when the run ends."""
        process = ManagedProcess(args, env=env, log=self.tmpdir / f"{name}.log", cwd=ROOT)
        self._processes.append(process)
        return process

    def close(self) -> None:
        while self._processes:
            self._processes.pop().stop()


class Ticker:
    """Prints ``done/total`` every few seconds while a long phase runs (call :meth:`poll`)."""

    def __init__(self, ctx: RunContext, what: str, total: int, every: float = 2.0) -> None:
        self.ctx = ctx
        self.what = what
        self.total = total
        self.every = every
        self.started = time.perf_counter()
        self._next = self.started + every

    def poll(self, done: int) -> None:
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + self.every
            self.ctx.progress(f"{self.what} {done:,}/{self.total:,} ({now - self.started:.1f}s)")


@contextlib.contextmanager
def _run_context(scenario: Scenario, index: int, total: int) -> Iterator[RunContext]:
    with tempfile.TemporaryDirectory(prefix=f"celeriac-bench-{scenario.name}-") as tmp:
        ctx = RunContext(scenario, index, total, Path(tmp))
        try:
            yield ctx
        finally:
            ctx.close()


def _describe(values: Mapping[str, float], scenario: Scenario) -> str:
    parts = []
    for metric in scenario.metrics:
        if metric.key in values:
            parts.append(f"{metric.key} {metric.format(values[metric.key])} {metric.unit}")
    return ", ".join(parts)


def format_value(value: float) -> str:
    """Thousands separators for big numbers, three significant digits for small ones."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def _announce(scenario: Scenario, runs: int, position: str) -> None:
    say(f"{position} {scenario.name}: {scenario.title} ({runs} run{'s' * (runs != 1)})")


def _repeat(outcome: Outcome, index: int, runs: int) -> None:
    """Run repetition ``index`` of the outcome's scenario; a failure sets ``outcome.error``."""
    scenario = outcome.scenario
    began = time.perf_counter()
    try:
        with _run_context(scenario, index, runs) as ctx:
            values = _with_timeout(scenario, ctx)
        missing = [m.key for m in scenario.metrics if m.key not in values]
        if missing:
            raise RuntimeError(f"the repetition returned no value for {missing}")
    except BaseException as exc:  # a failed scenario must not stop the others
        if _interrupted(exc):
            raise KeyboardInterrupt from exc
        outcome.error = describe_error(exc)
        outcome.seconds += time.perf_counter() - began
        say(f"    run {index}/{runs}: FAILED after {time.perf_counter() - began:.1f}s")
        say("      " + traceback.format_exc().rstrip().replace("\n", "\n      "))
        return
    for key, samples in outcome.samples.items():
        samples.append(float(values[key]))
    outcome.seconds += time.perf_counter() - began
    took = time.perf_counter() - began
    say(f"    run {index}/{runs}: {_describe(values, scenario)} ({took:.1f}s)")


def run_scenario(scenario: Scenario, runs: int, position: str) -> Outcome:
    """Run ``scenario`` ``runs`` times; stop at the first failure (then it is FAILED)."""
    _announce(scenario, runs, position)
    outcome = Outcome(scenario, {m.key: [] for m in scenario.metrics})
    for index in range(1, runs + 1):
        _repeat(outcome, index, runs)
        if outcome.error is not None:
            break
    return outcome


def run_interleaved(
    scenarios: Sequence[Scenario], runs: int, positions: Sequence[str]
) -> list[Outcome]:
    """Run 1 of every scenario, then run 2 of every one...; a failed one is not run again."""
    outcomes = [Outcome(s, {m.key: [] for m in s.metrics}) for s in scenarios]
    for index in range(1, runs + 1):
        for outcome, position in zip(outcomes, positions, strict=True):
            if outcome.error is None:
                _announce(outcome.scenario, runs, position)
                _repeat(outcome, index, runs)
    return outcomes


def _with_timeout(scenario: Scenario, ctx: RunContext) -> Mapping[str, float]:
    """Run one repetition; SIGALRM turns a hang into an error (the main thread only)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"one run took longer than {scenario.timeout:.0f}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, scenario.timeout)
    try:
        return scenario.repetition(ctx)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or a task group wrapped, Ctrl-C (or SIGTERM, see run.py)."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_interrupted(inner) for inner in exc.exceptions)
    return False


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of the real errors inside (nested) exception groups, one line."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(inner) for inner in exc.exceptions)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def python() -> str:
    """The interpreter running the bench (subprocesses use the same one)."""
    return sys.executable
