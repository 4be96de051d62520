"""Shared fixtures: event-loop backends, fresh apps on temporary SQLite files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Subprocesses started by tests (workers, producers, boxes) must import the same code.
_inherited = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), *_inherited])
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REQUIRE_SERVICES = os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A broker URL on a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'celeriac.db'}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in its own directory (the default broker file lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
