"""Starting and stopping real worker processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from celeriac import App


def spawn_worker(
    broker: str,
    *extra: str,
    app: str = "tests.apps.basic:app",
    loop: str = "asyncio",
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``celeriac worker`` as a separate process on ``broker``."""
    env = dict(os.environ, CELERIAC_BROKER=broker)
    out = open(log, "ab") if log else None  # noqa: SIM115 - the child gets a copy
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac",
                "--log-format",
                "json",
                "worker",
                app,
                "--loop",
                loop,
                *extra,
            ],
            env=env,
            stdout=out or subprocess.DEVNULL,
            stderr=out or subprocess.DEVNULL,
        )
    finally:
        if out is not None:
            out.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM a worker and wait for it; kill it if it does not stop."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@contextmanager
def worker_process(broker: str, *extra: str, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process for the block, stopped (SIGTERM) after it."""
    process = spawn_worker(broker, *extra, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        if process.poll() is None:
            stop(process)


async def wait_for_workers(app: App, count: int, timeout: float = 20) -> None:
    """Wait until ``count`` workers have sent a heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await app._bridge.call_async(app._status)
        if len(status["workers"]) >= count:
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{count} worker(s) did not come up within {timeout}s")


async def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait until the worker ``process`` (started with ``log=log``) says it is ready.

    A SIGTERM that reaches a worker still importing its app ends it by the signal's
    default action (nothing is claimed yet, so nothing is lost): tests that check a
    clean exit stop a worker only once it is ready.
    """
    tag = f":{process.pid}:"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker {process.pid} exited with {process.returncode}")
        if any(tag in line and " ready: queues" in line for line in lines(log)):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"worker {process.pid} was not ready within {timeout}s")


def lines(path: Path) -> list[str]:
    """The lines of a side-effect file (empty if it does not exist)."""
    return path.read_text().splitlines() if path.exists() else []
