"""What the publisher tests share: outages made real, and reading what a broker holds.

- :func:`write_locked`: this process holds the write lock of a SQLite file for a block
  (its broker cannot accept anything meanwhile).
- :class:`LockHolder`: *another* process holds that lock until told to let go.
- :func:`stopped`: a process frozen with SIGSTOP for a block (a hung server).
- :func:`fetch_ids`: every message id a broker hands out from a queue, in order.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from celeriac.brokers import Hub, open_broker

__all__ = ["LockHolder", "db_path", "fetch_ids", "stopped", "write_locked"]


def db_path(url: str) -> str:
    """The file of a ``sqlite:///...`` URL."""
    return url.removeprefix("sqlite:///").partition("?")[0]


@contextmanager
def write_locked(path: str) -> Iterator[None]:
    """Hold the write lock of SQLite file ``path`` (WAL: readers still read) for the block."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("COMMIT")
    finally:
        conn.close()


_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class LockHolder:
    """Another process that holds the write lock of a SQLite file until :meth:`release`."""

    def __init__(self, path: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != "locked":
            self._process.kill()
            raise RuntimeError(f"the lock holder did not lock {path}: {line!r}")

    def release(self) -> None:
        """Let go of the lock (the process commits and exits)."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            if self._process.poll() is None:
                stdin.write("\n")
                stdin.flush()
            self._process.wait(30)
        finally:
            stdin.close()
            stdout.close()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Freeze process ``pid`` (SIGSTOP) for the block: it keeps its sockets and answers
    nothing, as a hung server does. SIGCONT on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        while _state(pid) not in ("T", "t"):  # the signal is taken asynchronously
            time.sleep(0.01)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def fetch_ids(url: str, queue: str, expected: Collection[str], within: float = 60.0) -> list[str]:
    """The ids a broker hands out from ``queue``, in order (each acked), fetched until
    every id in ``expected`` came or ``within`` seconds passed. Duplicates are kept."""
    wanted = set(expected)

    async def main() -> list[str]:
        broker = open_broker(url, Hub())
        await broker.connect()
        ids: list[str] = []
        try:
            with anyio.move_on_after(within):
                while not wanted.issubset(ids):
                    deliveries = await broker.fetch([queue], 500, 1.0)
                    if deliveries:
                        await broker.ack(deliveries)
                    ids += [d.id for d in deliveries]
        finally:
            with anyio.CancelScope(shield=True):
                await broker.close()
        return ids

    return anyio.run(main)
