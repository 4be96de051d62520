"""The publisher and its backlog (CEP "Publisher", "Messages Backlog")."""

from __future__ import annotations

from celeriac.publisher.backlog import Backlog, MemoryBacklog, Ticket, open_backlog
from celeriac.publisher.publisher import Publisher

__all__ = ["Backlog", "MemoryBacklog", "Publisher", "Ticket", "open_backlog"]
