"""What the controllers of a test's own servers (``server_*.py``) share."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess", "spare_port"]


def spare_port() -> int:
    """A loopback TCP port that nothing listens on (free when this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server a test starts and stops; ``with server:`` runs it for the block."""

    def start(self) -> None:
        """Start the server; return once it accepts clients."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server (how hard is the subclass's to say)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
