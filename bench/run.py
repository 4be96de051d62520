"""Run the benchmarks and write bench/RESULTS.md.

    python bench/run.py [--quick] [--only NAME[,NAME...]] [--runs N] [--output PATH] [--list]

``--quick`` runs each scenario once instead of three times. ``--only`` takes
scenario names (``--only sqlite-e2e``) or prefixes (``--only sqlite`` runs every
SQLite scenario); ``--list`` shows the names. The exit code is 1 if a scenario
failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import Scenario

ROOT = Path(__file__).resolve().parent.parent


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Measure celeriac and write bench/RESULTS.md."
    )
    parser.add_argument("--quick", action="store_true", help="one run per scenario (default 3)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="scenario names or prefixes, comma-separated or repeated (see --list)",
    )
    parser.add_argument("--runs", type=int, help="runs per scenario (overrides --quick)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "RESULTS.md",
        help="where to write the table (default: bench/RESULTS.md)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _batches(scenarios: list[Scenario]) -> list[list[Scenario]]:
    """The scenarios in order, those of one ``group`` pulled together (run interleaved)."""
    batches: list[list[Scenario]] = []
    by_group: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        if scenario.group is None:
            batches.append([scenario])
        elif scenario.group in by_group:
            by_group[scenario.group].append(scenario)
        else:
            by_group[scenario.group] = [scenario]
            batches.append(by_group[scenario.group])
    return batches


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    """The bench's command line; the exit code is 1 if any scenario failed."""
    # This checkout first. Run as a script, bench/ itself would be on the path
    # (and its modules importable twice, as ``harness`` and ``bench.harness``).
    here = str(ROOT / "bench")
    sys.path[:] = [p for p in sys.path if p != here]
    for path in (str(ROOT), str(ROOT / "src")):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)

    from bench.harness import run_interleaved, run_scenario, say
    from bench.report import environment, load_average, render
    from bench.systems import load_scenarios
    from bench.systems.celeriac_common import event_loop

    args = _parse(argv)
    # SIGTERM (and SIGINT) unwind like Ctrl-C, so worker subprocesses are stopped
    # and temporary files removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scenarios, skipped, descriptions = load_scenarios()
    if args.list:
        for scenario in scenarios:
            say(f"{scenario.name:<24} {scenario.system:<10} {scenario.title}")
        return 0
    if args.only:
        wanted = [w.strip() for item in args.only for w in item.split(",") if w.strip()]
        chosen: set[str] = set()
        for want in wanted:
            exact = [s.name for s in scenarios if s.name == want]
            found = exact or [s.name for s in scenarios if s.name.startswith(want)]
            if not found:
                names = ", ".join(s.name for s in scenarios)
                say(f"no scenario named {want!r} (known: {names})")
                return 2
            chosen.update(found)
        scenarios = [s for s in scenarios if s.name in chosen]
    runs = args.runs or (1 if args.quick else 3)
    env = environment(event_loop())
    say(f"celeriac bench: {len(scenarios)} scenario(s), {runs} run(s) each")
    say(f"  {env['python']}, anyio {env['anyio']}, msgspec {env['msgspec']}, {env['CPUs']}")
    started = time.perf_counter()
    outcomes = []
    position = 0
    for batch in _batches(scenarios):
        gc.collect()
        positions = [f"[{position + i}/{len(scenarios)}]" for i in range(1, len(batch) + 1)]
        position += len(batch)
        if len(batch) == 1:
            outcomes.append(run_scenario(batch[0], runs, positions[0]))
        else:
            outcomes.extend(run_interleaved(batch, runs, positions))
    env["load average at end"] = load_average()
    used = {o.scenario.system for o in outcomes}
    text = render(
        outcomes,
        env,
        runs=runs,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        descriptions={k: v for k, v in descriptions.items() if k in used},
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    say("")
    say(text)
    say(f"wrote {args.output}")
    return 1 if any(o.error is not None for o in outcomes) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted: subprocesses stopped, nothing written", file=sys.stderr)
        sys.exit(130)
