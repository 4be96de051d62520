"""WAL mode is reached even when processes race to create the same file.

CI once lost a producer to ``database is locked`` from ``PRAGMA journal_mode =
WAL``: SQLite refuses a second process racing for the switch at once, without
calling the busy handler, so ``use_wal`` retries it within its patience.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers._sqlite_db import use_wal


class Contended:
    """A connection whose first ``refusals`` statements fail like a raced switch."""

    def __init__(self, conn: sqlite3.Connection, refusals: int, message: str) -> None:
        self.conn = conn
        self.refusals = refusals
        self.message = message

    def execute(self, sql: str) -> Any:
        if self.refusals:
            self.refusals -= 1
            raise sqlite3.OperationalError(self.message)
        return self.conn.execute(sql)


def test_a_refused_switch_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    use_wal(Contended(conn, 5, "database is locked"), patience=5)  # type: ignore[arg-type]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_patience_runs_out_with_the_original_error(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(Contended(conn, 10**6, "database is locked"), patience=0.3)  # type: ignore[arg-type]
    assert 0.3 <= time.monotonic() - started < 2


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        use_wal(Contended(conn, 1, "disk I/O error"), patience=5)  # type: ignore[arg-type]


def test_a_file_that_cannot_use_wal_is_refused() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)  # in-memory files stay "memory"
    with pytest.raises(sqlite3.OperationalError, match="cannot use WAL"):
        use_wal(conn, patience=1)


def _switch(path: str, start: float) -> str:
    while time.time() < start:
        pass
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    use_wal(conn, patience=5)
    return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def test_processes_creating_one_file_together_all_get_wal(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        for trial in range(15):
            path = str(tmp_path / f"race{trial}.db")
            start = time.time() + 0.1
            assert pool.starmap(_switch, [(path, start)] * 6) == ["wal"] * 6
