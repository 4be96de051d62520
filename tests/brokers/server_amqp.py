"""A RabbitMQ node of the test's own: a spare loopback port, its data in a temp dir.

Started with ``rabbitmq-server`` in the foreground, isolated from the machine's
node by its own node name, ports, home (Erlang cookie), config, plugins file
(none: no management plugin) and env file. ``stop()`` shuts it down (SIGTERM),
``kill()`` crashes it (SIGKILL); ``start()`` boots it again on the same data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.brokers._server import ServerProcess, spare_port

__all__ = ["RabbitServer", "rabbitmq_server_binary"]

_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")


def rabbitmq_server_binary() -> str | None:
    """The ``rabbitmq-server`` script to run directly, if installed."""
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("rabbitmq-server")


class RabbitServer(ServerProcess):
    """One RabbitMQ node on a spare port; ``url`` reaches it as guest."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.port = spare_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.node = f"celeriac-test-{os.getpid()}-{self.port}@localhost"
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        self._env = dict(
            os.environ,
            HOME=str(root),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(spare_port()),
            RABBITMQ_MNESIA_BASE=str(root / "mnesia"),
            RABBITMQ_LOG_BASE=str(root / "log"),
            RABBITMQ_CONFIG_FILE=str(root / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(root / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(root / "rabbitmq-env.conf"),
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Boot the node; return once it speaks AMQP."""
        assert self._process is None, "already running"
        with open(self.root / "console.log", "ab") as out:
            self._process = subprocess.Popen(
                [self.binary],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        deadline = time.monotonic() + timeout
        while not self._speaks_amqp():
            if self._process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {self.root / 'console.log'}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rabbitmq-server did not start in {timeout} s")
            time.sleep(0.1)

    def _speaks_amqp(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"  # a method frame: connection.start
        except OSError:
            return False

    def stop(self) -> None:
        """Shut the node down (connections drop); wait for it to exit."""
        self._signal(signal.SIGTERM, wait=60.0)

    def kill(self) -> None:
        """Crash the node (SIGKILL to its process group)."""
        self._signal(signal.SIGKILL, wait=10.0)

    def _signal(self, sig: int, wait: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if sig == signal.SIGTERM:
                process.send_signal(sig)  # the script stops the VM and waits for it
            else:
                os.killpg(process.pid, sig)
            process.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        try:  # what is left of the group (erl_child_setup) goes with it
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
