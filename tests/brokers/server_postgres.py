"""A PostgreSQL server of the test's own: a fresh cluster in a temp dir, on a spare port.

Never the shared service: ``initdb`` makes a new cluster (trust auth, loopback
only), ``pg_ctl`` starts it and stops it with ``-m immediate`` (as a crash would:
no checkpoint, so the next start replays the WAL). PostgreSQL refuses to run as
root, so as root the commands run as the ``postgres`` user (``runuser``) in a
directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.brokers._server import ServerProcess, spare_port

__all__ = ["BIN", "PostgresServer", "available"]

BIN = Path(os.environ.get("CELERIAC_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str | None:
    """Why a server cannot be made here, or None when it can."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"no initdb/pg_ctl in {BIN} (set CELERIAC_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


class PostgresServer(ServerProcess):
    """One throwaway cluster; ``url`` names its ``postgres`` database."""

    def __init__(self, options: str = "") -> None:
        self.port = spare_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-pg-"))
        self.data = self.dir / "data"
        query = f"?{options}" if options else ""
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres{query}"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run(BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
        self.running = False

    def _run(self, *command: str | Path) -> None:
        argv = [str(c) for c in command]
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            " -c max_connections=60 -c shared_buffers=16MB"
        )
        self._run(
            BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", self.dir / "log", "-w", "start"
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server as a crash would (immediate shutdown: connections drop)."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs and delete its files."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
