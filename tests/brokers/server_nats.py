"""A nats-server of a test's own, for the server-restart case.

It runs with JetStream on a spare loopback port, its storage in a temporary
directory (file storage, so a restart keeps the streams), and :meth:`stop` kills
it with SIGKILL, as a crash would. The shared service on port 4222 is never
touched.

Durability: nats-server stores a message in memory, acknowledges it, and writes it
to its block file a few milliseconds later (a flusher coalesces writes); it syncs
files to disk every ``sync_interval`` (2 min by default). So SIGKILL can lose what
was acknowledged in the last milliseconds before it, and a power loss up to the
sync interval. Newer servers accept ``sync_interval: always`` (fsync every write),
set here when the server's own configuration check (``-t``) accepts it; the 2.9
server installed here rejects that setting.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.brokers._server import ServerProcess, spare_port

__all__ = ["NatsServer", "nats_server_binary"]


def nats_server_binary() -> str | None:
    """The ``nats-server`` program, if installed."""
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


class NatsServer(ServerProcess):
    """Start, crash and restart a private nats-server (see the module docstring)."""

    def __init__(self, directory: Path, binary: str, *, options: str = "") -> None:
        self.directory = directory
        self.binary = binary
        self.port = spare_port()
        self.url = f"nats://127.0.0.1:{self.port}/?namespace=restart" + (
            f"&{options}" if options else ""
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._config = directory / "nats.conf"
        for sync in ("  sync_interval: always\n", ""):
            self._config.write_text(
                f"listen: 127.0.0.1:{self.port}\n"
                f'jetstream {{\n  store_dir: "{directory / "js"}"\n{sync}}}\n'
            )
            check = subprocess.run([binary, "-c", str(self._config), "-t"], capture_output=True)
            if check.returncode == 0:
                break

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once it accepts clients (its streams loaded)."""
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self._config)], stdout=log, stderr=log
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.directory / 'nats.log'}")
            if b"Server is ready" in (self.directory / "nats.log").read_bytes():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"nats-server did not start within {timeout}s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: connections drop as in a crash)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        log = self.directory / "nats.log"  # the next start waits for a new "ready"
        if log.exists():
            log.rename(self.directory / f"nats-{time.monotonic_ns()}.log")
