"""The wire protocol: the envelope, its codecs and signing (see ``docs/protocol.md``)."""

from __future__ import annotations

from celeriac.messages.codec import JSON, MSGPACK, Codec, Format, canonical_bytes
from celeriac.messages.envelope import PROTOCOL_VERSION, Envelope, Kind, new_id

__all__ = [
    "JSON",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "Codec",
    "Envelope",
    "Format",
    "Kind",
    "canonical_bytes",
    "new_id",
]
