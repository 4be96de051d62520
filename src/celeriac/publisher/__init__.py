"""The publisher and its backlog (CEP "Publisher")."""

from __future__ import annotations

from celeriac.publisher.publisher import Publisher

__all__ = ["Publisher"]
