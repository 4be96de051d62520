"""The box program times a request's soft limit itself, from the call of the function.

Before, the worker sent ``SIGUSR1`` when its own timer ran out, and that timer
included the box's start and the task module's import: on a loaded machine the
signal could arrive before the task ran (and be lost, the task then running on
past its limit). Now the limit travels with the request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ask(*requests: dict[str, object]) -> list[dict[str, object]]:
    lines = "".join(json.dumps(r) + "\n" for r in requests).encode()
    done = subprocess.run(
        [sys.executable, "-m", "celeriac.worker.boxchild"],
        input=lines,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert replies[0]["ready"] is True
    return replies[1:]


def test_the_soft_limit_counts_the_call_not_the_import() -> None:
    started = time.monotonic()
    [reply] = ask(
        {
            "id": "1",
            "module": "tests.worker.slow_import_task",
            "qualname": "told",
            "args": [10],
            "soft_time_limit": 0.3,
        }
    )
    assert reply == {"id": "1", "ok": True, "result": "told"}
    assert time.monotonic() - started < 8


def test_a_call_within_its_limit_is_not_disturbed_and_the_next_one_is_timed_afresh() -> None:
    base = {"module": "tests.worker.slow_import_task", "qualname": "told"}
    first, second, third = ask(
        {**base, "id": "a", "args": [0.05], "soft_time_limit": 0.5},
        {**base, "id": "b", "args": [0.6]},  # no limit: the first one's timer is off
        {**base, "id": "c", "args": [5], "soft_time_limit": 0.2},
    )
    assert [first["result"], second["result"], third["result"]] == ["not told", "not told", "told"]
