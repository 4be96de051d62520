"""A redis-server of a test's own, for the server-restart case.

It runs on a spare loopback port in a temporary directory with the append-only
file on and synced on every write (``appendfsync always``), so what the server
acknowledged survives :meth:`RedisServer.stop` (a SIGKILL, as a crash would)
and :meth:`RedisServer.start` reloads it. The shared service on port 6379 is
never touched.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from tests.brokers._server import ServerProcess, spare_port

__all__ = ["RedisServer", "make_certificates", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The ``redis-server`` program, if installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def make_certificates(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 in ``directory`` (needs ``openssl``)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    return directory  # fmt: skip


class RedisServer(ServerProcess):
    """Start, crash and restart a private redis-server (see the module docstring)."""

    def __init__(
        self, directory: Path, binary: str, *, options: str = "", tls: Path | None = None
    ) -> None:
        self.directory = directory
        self.binary = binary
        self.port = spare_port()
        self.tls = tls
        scheme = "rediss" if tls else "redis"
        self.url = f"{scheme}://127.0.0.1:{self.port}/0" + (f"?{options}" if options else "")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once it answers PING (its data loaded)."""
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.tls is not None:  # TLS only: ca.crt, server.crt and server.key in that folder
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += [
                "--tls-cert-file", str(self.tls / "server.crt"),
                "--tls-key-file", str(self.tls / "server.key"),
                "--tls-ca-cert-file", str(self.tls / "ca.crt"),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited ({self._process.returncode}): {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return self._ping(raw)
                context = ssl.create_default_context(cafile=str(self.tls / "ca.crt"))
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    return self._ping(sock)
        except OSError:
            return False

    @staticmethod
    def _ping(sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL): clients see their connections drop."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
