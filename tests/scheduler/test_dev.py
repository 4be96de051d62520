"""``celeriac dev`` runs the periodic scheduler beside its worker, in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_dev_publishes_and_runs_periodic_tasks_in_process(tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    env = {
        **os.environ,
        "CELERIAC_BROKER": f"sqlite:///{tmp_path / 'dev.db'}",
        "TICKS_FILE": str(ticks),
    }
    command = [sys.executable, "-m", "celeriac", "dev", "tests.scheduler.dev_app:app"]
    done = subprocess.run(
        [*command, "--run", "tests.scheduler.dev_app:main", "--grace", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(ticks.read_text().splitlines()) >= 3
    assert "scheduler" in done.stderr
