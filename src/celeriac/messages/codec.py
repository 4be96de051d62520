"""Encoding, decoding and signing envelopes.

A :class:`Codec` turns an :class:`~celeriac.messages.envelope.Envelope` into bytes
and back. JSON is the default; msgpack is optional. The format of incoming bytes
is detected from the first byte (a JSON envelope starts with ``{``, a msgpack
one with a map header), never from anything the sender claims, and only formats
in the codec's allow-list are decoded. Pickle is never used.

Limits are checked before decoding: a body over ``max_size`` bytes is rejected
without being parsed.

Signing (optional): with a key, every encoded envelope carries
``signature = "hmac-sha256:<kid>:<hex digest>"`` computed over the canonical form
(every field of the envelope, defaults included, except ``signature``, as JSON
with keys sorted and no whitespace).
With a key configured, a message that is unsigned, signed with an unknown key
id, or wrongly signed raises :class:`~celeriac.errors.SignatureError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from celeriac.errors import DecodeError, SignatureError, VersionError
from celeriac.messages.envelope import PROTOCOL_VERSION, Envelope

__all__ = ["JSON", "MSGPACK", "Codec", "Format", "canonical_bytes"]

Format = Literal["json", "msgpack"]
JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
_CONTENT_TYPES: Final[dict[str, Format]] = {JSON: "json", MSGPACK: "msgpack"}
_SIG_SCHEME: Final = "hmac-sha256"

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Envelope)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Envelope)
_canonical_encoder = msgspec.json.Encoder(order="sorted")


def canonical_bytes(envelope: Envelope) -> bytes:
    """The bytes a signature covers: every field but ``signature``, as sorted JSON."""
    fields = msgspec.structs.asdict(envelope)
    del fields["signature"]
    return _canonical_encoder.encode(fields)


def _detect(data: bytes) -> Format:
    if not data:
        raise DecodeError("empty message body")
    first = data[0]
    if first == 0x7B:  # "{"
        return "json"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "msgpack"
    if first in b" \t\r\n":
        return "json"
    raise DecodeError(f"not an envelope: body starts with byte 0x{first:02x}")


class Codec:
    """Encodes and decodes envelopes; signs and verifies them when keyed.

    ``keys`` maps key ids to secrets; ``signing_kid`` picks the one used to sign.
    Every key in ``keys`` is accepted when verifying, which is how keys rotate.
    """

    def __init__(
        self,
        *,
        format: Format = "json",
        accept: frozenset[Format] = frozenset({"json", "msgpack"}),
        keys: Mapping[str, bytes] | None = None,
        signing_kid: str | None = None,
        max_size: int = 16 * 1024 * 1024,
    ) -> None:
        self.format: Format = format
        self.accept = accept
        self.keys = dict(keys or {})
        if self.keys and signing_kid is None:
            signing_kid = next(iter(self.keys))
        if signing_kid is not None and signing_kid not in self.keys:
            raise ValueError(f"signing key id {signing_kid!r} is not among the keys")
        self.signing_kid = signing_kid
        self.max_size = max_size
        self.content_type = JSON if format == "json" else MSGPACK

    @property
    def signing(self) -> bool:
        """Whether messages are signed and signatures required."""
        return bool(self.keys)

    def _digest(self, kid: str, envelope: Envelope) -> str:
        return hmac.new(self.keys[kid], canonical_bytes(envelope), hashlib.sha256).hexdigest()

    def sign(self, envelope: Envelope) -> Envelope:
        """``envelope`` with a fresh signature (unchanged if no key is configured)."""
        if self.signing_kid is None:
            return envelope
        kid = self.signing_kid
        return envelope.with_signature(f"{_SIG_SCHEME}:{kid}:{self._digest(kid, envelope)}")

    def verify(self, envelope: Envelope) -> None:
        """Raise :class:`SignatureError` unless ``envelope`` is validly signed (when keyed)."""
        if not self.keys:
            return
        sig = envelope.signature
        if not sig:
            raise SignatureError("message is not signed, and a signing key is configured")
        scheme, _, rest = sig.partition(":")
        kid, _, digest = rest.partition(":")
        if scheme != _SIG_SCHEME:
            raise SignatureError(f"unsupported signature scheme {scheme!r}")
        if kid not in self.keys:
            raise SignatureError(f"message signed with unknown key id {kid!r}")
        try:
            expected = self._digest(kid, envelope)
        except (TypeError, ValueError) as exc:  # e.g. msgpack ext values, non-string map keys
            raise SignatureError(f"message has no canonical JSON form: {exc}") from exc
        # Compare bytes: compare_digest refuses str with non-ASCII characters.
        if not hmac.compare_digest(digest.encode("utf-8", "surrogatepass"), expected.encode()):
            raise SignatureError("signature does not match the message")

    def encode(self, envelope: Envelope) -> bytes:
        """Sign (when keyed) and serialize ``envelope`` in this codec's format."""
        if envelope.content_type != self.content_type:
            envelope = msgspec.structs.replace(envelope, content_type=self.content_type)
        envelope = self.sign(envelope)
        if self.format == "json":
            return _json_encoder.encode(envelope)
        return _msgpack_encoder.encode(envelope)

    def decode(self, data: bytes, *, verify: bool = True) -> Envelope:
        """Parse and check ``data``: size, format, schema, version, then signature."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(
                f"message body is {type(data).__name__}, not bytes (store it as a BLOB)"
            )
        if len(data) > self.max_size:
            raise DecodeError(f"message of {len(data)} bytes is over the {self.max_size} limit")
        fmt = _detect(data)
        if fmt not in self.accept:
            raise DecodeError(f"{fmt} messages are not accepted here")
        try:
            envelope = (
                _json_decoder.decode(data) if fmt == "json" else _msgpack_decoder.decode(data)
            )
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            # msgspec reports invalid UTF-8 inside strings as UnicodeDecodeError
            raise DecodeError(f"malformed envelope: {exc}") from exc
        except RecursionError as exc:  # absurdly deep nesting
            raise DecodeError("malformed envelope: nested too deeply") from exc
        if envelope.v != PROTOCOL_VERSION:
            raise VersionError(
                f"protocol version {envelope.v} is not supported (this build speaks "
                f"{PROTOCOL_VERSION})"
            )
        if verify:
            self.verify(envelope)
        return envelope

    def encode_value(self, value: Any) -> bytes:
        """Serialize a plain value (a result, say) as JSON."""
        return _json_encoder.encode(value)
