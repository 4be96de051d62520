"""The message envelope: one frozen, versioned struct for commands, events and documents.

The envelope is the whole body a broker carries. It is specified, field by field,
in ``docs/protocol.md`` with a JSON Schema (``docs/protocol.schema.json``), so any
language can produce and consume it without a client library.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import msgspec

__all__ = ["PROTOCOL_VERSION", "Envelope", "Kind", "new_id"]

PROTOCOL_VERSION = 1

Kind = Literal["command", "event", "document"]


def new_id() -> str:
    """A new message id: 32 lowercase hex characters (a random 128-bit value)."""
    return os.urandom(16).hex()


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=False):
    """One message on the wire.

    Fields (see ``docs/protocol.md`` for the normative text):

    - ``v``: protocol version; receivers reject versions they do not know.
    - ``id``: unique per message; the idempotent receiver and revocation key.
    - ``kind``: ``command`` (run task ``name``), ``event`` (``name`` happened) or
      ``document`` (data, e.g. a task result).
    - ``name``: the task, event or document type name.
    - ``args`` / ``kwargs``: positional and keyword arguments (commands), the event's
      fields (events, in ``kwargs``), or the payload (documents, in ``body``).
    - ``headers``: free-form string map carried along (tracing, user metadata).
    - ``eta`` / ``expires``: unix timestamps (seconds, float). Not before ``eta``;
      not executed after ``expires``.
    - ``attempt``: 0 for the first run, incremented by each retry.
    - ``priority``: 0-9, higher first.
    - ``queue``: the queue the message was published to.
    - ``correlation_id``: the id of the workflow or request this message belongs to.
    - ``causation_id``: the id of the message that caused this one.
    - ``traceparent`` / ``tracestate``: W3C trace context.
    - ``content_type``: the serialization of this envelope (``application/json`` or
      ``application/msgpack``).
    - ``ignore_result``: the sender does not want a result document.
    - ``body``: the payload of a document message.
    - ``sent_at``: when the message was first published (unix seconds).
    - ``signature``: ``"hmac-sha256:<kid>:<hex>"`` over the canonical form, or absent.
    """

    id: str
    name: str
    kind: Kind = "command"
    v: int = PROTOCOL_VERSION
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    headers: dict[str, str] = {}
    eta: float | None = None
    expires: float | None = None
    attempt: int = 0
    priority: int = 0
    queue: str = "default"
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    content_type: str = "application/json"
    ignore_result: bool = False
    body: Any = None
    sent_at: float = 0.0
    signature: str | None = None

    def with_signature(self, signature: str | None) -> Envelope:
        """A copy carrying ``signature``."""
        return msgspec.structs.replace(self, signature=signature)

    def stamped(self) -> Envelope:
        """A copy with ``sent_at`` set to now, unless it was set already."""
        if self.sent_at:
            return self
        return msgspec.structs.replace(self, sent_at=time.time())
