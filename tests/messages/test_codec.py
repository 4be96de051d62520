"""The codec: round trips, hostile input, signing and the canonical form (protocol.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.messages import foreign
from tests.messages.strategies import FIELD_VALUES, envelopes, json_values

from celeriac.errors import DecodeError, ProtocolError, SignatureError, VersionError
from celeriac.messages import PROTOCOL_VERSION, Codec, Envelope, canonical_bytes

KEYS = {"k1": b"first secret", "k2": b"second secret"}
FORMATS = ["json", "msgpack"]
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_reject(codec: Codec, data: Any) -> Envelope | None:
    """Decode ``data``; a ProtocolError means "rejected". Anything else fails the test."""
    try:
        return codec.decode(data)
    except ProtocolError:
        return None


def raw(envelope: Envelope, fmt: str) -> bytes:
    """``envelope`` serialized as is, as an attacker writing bytes would (no re-signing)."""
    return msgspec.json.encode(envelope) if fmt == "json" else msgspec.msgpack.encode(envelope)


# -- round trips ------------------------------------------------------------------------


@FAST
@given(
    envelope=envelopes(),
    fmt=st.sampled_from(FORMATS),
    kid=st.sampled_from([None, *sorted(KEYS)]),
)
def test_round_trip(envelope: Envelope, fmt: str, kid: str | None) -> None:
    keys = KEYS if kid else None
    codec = Codec(format=fmt, keys=keys, signing_kid=kid)  # type: ignore[arg-type]
    data = codec.encode(envelope)
    decoded = codec.decode(data)
    assert decoded == msgspec.structs.replace(
        envelope, content_type=codec.content_type, signature=decoded.signature
    )
    if kid is None:
        assert decoded.signature is None
    else:
        assert decoded.signature is not None
        assert re.fullmatch(f"hmac-sha256:{kid}:[0-9a-f]{{64}}", decoded.signature)
    # Each format is recognised by its first byte; both are always accepted.
    if fmt == "json":
        assert data[0] == 0x7B
    else:
        assert 0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)
    other = Codec(format="msgpack" if fmt == "json" else "json", keys=keys)
    assert other.decode(data) == decoded
    # Receivers apply the defaults of the fields the encoder left out.
    sent = msgspec.json.decode(data) if fmt == "json" else msgspec.msgpack.decode(data)
    full = msgspec.structs.asdict(decoded)
    for field, default in foreign.DEFAULTS.items():
        assert full[field] == sent.get(field, default)


def test_an_envelope_of_defaults_is_two_fields() -> None:
    assert Codec().encode(Envelope(id="a", name="n")) == b'{"id":"a","name":"n"}'


def test_only_accepted_formats_are_decoded() -> None:
    envelope = Envelope(id="a", name="n")
    json_only = Codec(accept=frozenset({"json"}))
    with pytest.raises(DecodeError, match="msgpack messages are not accepted"):
        json_only.decode(Codec(format="msgpack").encode(envelope))
    assert json_only.decode(Codec().encode(envelope)) == envelope


def test_leading_whitespace_is_json() -> None:
    assert Codec().decode(b' \n\t{"id": "a", "name": "n"}') == Envelope(id="a", name="n")


# -- hostile input: nothing but ProtocolError ---------------------------------------------

CODECS = [Codec(), Codec(keys=KEYS), Codec(max_size=64)]
PREFIXES = [b"", b"{", b" {", b"\x81", b"\x8f", b"\xde\x00\x02", b"\xdf\x00\x00\x00\x02"]


@MANY
@given(prefix=st.sampled_from(PREFIXES), data=st.binary(max_size=300))
def test_arbitrary_bytes(prefix: bytes, data: bytes) -> None:
    for codec in CODECS:
        decode_or_reject(codec, prefix + data)


@FAST
@given(value=json_values)
def test_arbitrary_json(value: Any) -> None:
    for codec in CODECS:
        decode_or_reject(codec, json.dumps(value).encode())
        decode_or_reject(codec, msgspec.msgpack.encode(value))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "repeat"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[i] = draw(st.integers(0, 255))
        elif op == "delete" and out:
            del out[i]
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "repeat":
            out[i:i] = out[i : i + draw(st.integers(1, 16))]
    return bytes(out)


@MANY
@given(data=st.data(), envelope=envelopes(), fmt=st.sampled_from(FORMATS))
def test_mutated_messages(data: st.DataObject, envelope: Envelope, fmt: str) -> None:
    for keys in (None, KEYS):
        body = Codec(format=fmt, keys=keys).encode(envelope)  # type: ignore[arg-type]
        decode_or_reject(Codec(keys=keys), data.draw(mutations(body)))


@FAST
@given(envelope=envelopes(), fmt=st.sampled_from(FORMATS))
def test_truncated_messages_are_rejected(envelope: Envelope, fmt: str) -> None:
    codec = Codec(format=fmt)  # type: ignore[arg-type]
    body = codec.encode(envelope)
    for end in range(len(body)):
        with pytest.raises(DecodeError):
            codec.decode(body[:end])


@pytest.mark.parametrize("depth", [1_000, 10_000, 1_000_000])
@pytest.mark.parametrize("where", ["args", "kwargs", "body"])
def test_deep_nesting_is_rejected(depth: int, where: str) -> None:
    nested: bytes = b"[" * depth + b"]" * depth
    if where == "kwargs":
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    field = b"[" + nested + b"]" if where == "args" else nested
    with pytest.raises(DecodeError, match="nested too deeply"):
        Codec().decode(b'{"id":"a","name":"n","' + where.encode() + b'":' + field + b"}")
    packed = b"\x83\xa2id\xa1a\xa4name\xa1n\xa4body" + b"\x91" * depth + b"\x90"
    with pytest.raises(DecodeError, match="nested too deeply"):
        Codec().decode(packed)


def test_moderate_nesting_is_accepted() -> None:
    depth = 100  # protocol.md: receivers accept at least 100 levels
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    envelope = Envelope(id="a", name="n", args=[value], kwargs={"x": value}, body=value)
    for fmt in FORMATS:
        codec = Codec(format=fmt, keys=KEYS)  # type: ignore[arg-type]
        assert codec.decode(codec.encode(envelope)).args == [value]


def test_over_size_bodies_are_rejected_before_parsing() -> None:
    codec = Codec(max_size=1_000)
    exact = b'{"id":"a","name":"n","args":["' + b"x" * 967 + b'"]}'
    assert len(exact) == 1_000
    assert codec.decode(exact).args == ["x" * 967]
    with pytest.raises(DecodeError, match="over the 1000 limit"):
        codec.decode(exact[:-2] + b" ]}")
    with pytest.raises(DecodeError, match="over the 1000 limit"):
        codec.decode(b"\xff" * 1_001)  # not parsed: not even the first byte is looked at
    default = Codec()
    assert default.max_size == 16 * 1024 * 1024
    with pytest.raises(DecodeError, match="over the 16777216 limit"):
        default.decode(b'{"id":"a","name":"n","body":"' + b"x" * default.max_size + b'"}')


@FAST
@given(version=st.integers(min_value=-(2**63), max_value=2**64 - 1).filter(lambda v: v != 1))
def test_unknown_versions_are_rejected(version: int) -> None:
    for data in (
        json.dumps({"id": "a", "name": "n", "v": version}).encode(),
        msgspec.msgpack.encode({"v": version, "id": "a", "name": "n"}),
    ):
        with pytest.raises(VersionError, match=f"protocol version {version} is not supported"):
            Codec().decode(data)
    assert PROTOCOL_VERSION == 1


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":"a","name":"\xff"}',  # invalid UTF-8 (used to escape as UnicodeDecodeError)
        b'{"id":"a","name":"n","args":["\xed\xa0\x80"]}',  # an encoded surrogate
        b'{"id":"a","name":"n","args":["\\ud800"]}',  # a lone surrogate escape
        b'{"id":"a","name":"n","args":[1e400]}',  # beyond double range
        b'{"id":"a","name":"n","args":[NaN]}',
        b'{"id":"a","name":"n","attempt":1.0}',  # integers have no fraction
        b'{"id":"a","name":"n"} trailing',
        b"[1, 2]",
        b"\x92\xa1a\xa1n",  # msgpack array
        msgspec.msgpack.encode({"id": "a", "name": b"bytes"}),
    ],
)
def test_malformed_bodies_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec().decode(data)


def test_text_bodies_are_decode_errors() -> None:
    # A broker must hand out bytes; a str (a TEXT column, say) is rejected, not a crash.
    with pytest.raises(DecodeError, match="not bytes"):
        Codec().decode('{"id":"a","name":"n"}')  # type: ignore[arg-type]


# -- signing ----------------------------------------------------------------------------


@FAST
@given(data=st.data(), envelope=envelopes(), fmt=st.sampled_from(FORMATS))
def test_changing_any_one_field_breaks_the_signature(
    data: st.DataObject, envelope: Envelope, fmt: str
) -> None:
    codec = Codec(format=fmt, keys=KEYS)  # type: ignore[arg-type]
    signed = codec.decode(codec.encode(envelope))
    field = data.draw(st.sampled_from(sorted(FIELD_VALUES)))
    tampered = msgspec.structs.replace(signed, **{field: data.draw(FIELD_VALUES[field])})
    assume(canonical_bytes(tampered) != canonical_bytes(signed))
    with pytest.raises(SignatureError, match="does not match"):
        codec.decode(raw(tampered, fmt))


@MANY
@given(envelope=envelopes(), fmt=st.sampled_from(FORMATS), bit=st.integers(min_value=0))
def test_a_flipped_bit_never_yields_another_valid_message(
    envelope: Envelope, fmt: str, bit: int
) -> None:
    codec = Codec(format=fmt, keys=KEYS)  # type: ignore[arg-type]
    body = bytearray(codec.encode(envelope))
    bit %= len(body) * 8
    body[bit // 8] ^= 1 << (bit % 8)
    decoded = decode_or_reject(codec, bytes(body))
    if decoded is not None:  # only a different spelling of the same message, like 1e16/1E16
        assert canonical_bytes(decoded) == canonical_bytes(codec.decode(codec.encode(envelope)))


def test_unknown_kid_is_rejected() -> None:
    stranger = Codec(keys={"k3": b"first secret"})
    with pytest.raises(SignatureError, match="unknown key id 'k3'"):
        Codec(keys=KEYS).decode(stranger.encode(Envelope(id="a", name="n")))


def test_wrong_secret_is_rejected() -> None:
    impostor = Codec(keys={"k1": b"guessed secret"})
    with pytest.raises(SignatureError, match="does not match"):
        Codec(keys=KEYS).decode(impostor.encode(Envelope(id="a", name="n")))


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsigned_is_rejected_when_a_key_is_configured(fmt: str) -> None:
    unsigned = Codec(format=fmt).encode(Envelope(id="a", name="n"))  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="not signed"):
        Codec(keys=KEYS).decode(unsigned)
    assert Codec(keys=KEYS).decode(unsigned, verify=False) == Envelope(
        id="a",
        name="n",
        content_type=Codec(format=fmt).content_type,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "hmac-sha256",
        "hmac-sha256:k1",
        "hmac-sha256:k1:",
        "HMAC-SHA256:k1:" + "0" * 64,
        "hmac-sha1:k1:" + "0" * 40,
        "hmac-sha256:k1:" + "é" * 64,  # non-ASCII (used to escape as TypeError)
        "hmac-sha256:k1:" + "0" * 64 + ":extra",
        "ed25519:k1:" + "0" * 128,
    ],
)
def test_malformed_signatures_are_rejected(signature: str) -> None:
    data = json.dumps({"id": "a", "name": "n", "signature": signature}).encode()
    with pytest.raises(SignatureError):
        Codec(keys=KEYS).decode(data)


def test_digest_is_lowercase_hex() -> None:
    codec = Codec(keys=KEYS)
    signed = codec.decode(codec.encode(Envelope(id="a", name="n")))
    assert signed.signature is not None
    shouted = signed.with_signature(
        signed.signature.upper().replace("HMAC-SHA256:K1", "hmac-sha256:k1")
    )
    with pytest.raises(SignatureError):
        codec.decode(raw(shouted, "json"))


@pytest.mark.parametrize(
    "value",
    [msgspec.msgpack.Ext(5, b"x"), {1: "int key"}, {(1, 2): "array key"}],
    ids=["ext", "int-key", "array-key"],
)
def test_msgpack_values_without_a_json_form_fail_verification(value: Any) -> None:
    # These used to escape verification as TypeError from the canonical encoder.
    data = msgspec.msgpack.encode(
        {"id": "a", "name": "n", "args": [value], "signature": "hmac-sha256:k1:" + "0" * 64}
    )
    with pytest.raises(SignatureError, match="no canonical JSON form"):
        Codec(keys=KEYS).decode(data)


def test_key_rotation() -> None:
    envelope = Envelope(id="a", name="n", args=[1])
    old = Codec(keys={"old": b"old secret"})
    rotating = Codec(keys={"new": b"new secret", "old": b"old secret"}, signing_kid="new")
    retired = Codec(keys={"new": b"new secret"})
    from_old = old.encode(envelope)
    from_new = rotating.encode(envelope)
    assert rotating.decode(from_old).signature.startswith("hmac-sha256:old:")  # type: ignore[union-attr]
    assert rotating.decode(from_new).signature.startswith("hmac-sha256:new:")  # type: ignore[union-attr]
    assert retired.decode(from_new).args == [1]
    with pytest.raises(SignatureError, match="unknown key id 'old'"):
        retired.decode(from_old)
    with pytest.raises(SignatureError, match="unknown key id 'new'"):
        old.decode(from_new)


def test_signing_kid_must_be_a_key() -> None:
    with pytest.raises(ValueError, match="not among the keys"):
        Codec(keys=KEYS, signing_kid="k9")


# -- the canonical form -------------------------------------------------------------------

HAND_WRITTEN = b"""
{
  "v": 1, "kind": "command",
  "sent_at": 1700000000,
  "queue": "default",   "priority": 0, "attempt": 0,
  "args": [2, 3], "kwargs": {}, "headers": {},
  "eta": null, "expires": null, "body": null,
  "correlation_id": null, "causation_id": null, "traceparent": null, "tracestate": null,
  "ignore_result": false, "content_type": "application/json",
  "name": "protocol.add",
  "id": "6f1c2a9e0d4b4e7f8a3b5c6d7e8f9012",
  "x-unknown": "ignored, not signed",
  "signature": null
}
"""


def test_canonical_form_ignores_order_spelling_and_defaults() -> None:
    compact = Envelope(
        id="6f1c2a9e0d4b4e7f8a3b5c6d7e8f9012",
        name="protocol.add",
        args=[2, 3],
        sent_at=1700000000.0,
    )
    hand = Codec().decode(HAND_WRITTEN)
    assert canonical_bytes(hand) == canonical_bytes(compact)
    # A signature computed from the hand-written text, per protocol.md, verifies...
    message = json.loads(HAND_WRITTEN)
    signed_text = HAND_WRITTEN.replace(
        b'"signature": null',
        f'"signature": "{foreign.signature_of(message, "k2", KEYS["k2"])}"'.encode(),
    )
    assert Codec(keys=KEYS).decode(signed_text).args == [2, 3]
    # ... and so does celeriac's own signature on the compact form, moved into it.
    signature = Codec(keys=KEYS).decode(Codec(keys=KEYS).encode(compact)).signature
    moved = HAND_WRITTEN.replace(b'"signature": null', f'"signature": "{signature}"'.encode())
    assert Codec(keys=KEYS).decode(moved) == Codec(keys=KEYS).decode(
        Codec(keys=KEYS).encode(compact)
    )


@FAST
@given(data=st.data(), envelope=envelopes())
def test_canonical_form_of_any_spelling(data: st.DataObject, envelope: Envelope) -> None:
    codec = Codec(keys=KEYS)
    compact = codec.encode(envelope)
    message = json.loads(compact)
    for field, default in foreign.DEFAULTS.items():  # spell out some defaults
        if field not in message and data.draw(st.booleans()):
            message[field] = default
    order = data.draw(st.permutations(sorted(message)))
    indent = data.draw(st.sampled_from([None, 0, 2]))
    text = json.dumps({k: message[k] for k in order}, indent=indent, ensure_ascii=True)
    assert codec.decode(text.encode()) == codec.decode(compact)


@MANY
@given(envelope=envelopes())
def test_foreign_canonical_form_is_the_codecs(envelope: Envelope) -> None:
    # tests/messages/foreign.py implements protocol.md's rules with the stdlib alone.
    message = json.loads(Codec().encode(envelope))
    assert foreign.canonical_form(message) == canonical_bytes(
        msgspec.structs.replace(envelope, content_type="application/json")
    )


@settings(max_examples=600, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_float_rule(x: float) -> None:
    assert foreign.format_float(x) == msgspec.json.encode(x).decode()


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1700000000.0, "1700000000.0"),
        (1700000000.25, "1700000000.25"),
        (0.00001, "0.00001"),
        (0.000001, "1e-6"),
        (1.5e-7, "1.5e-7"),
        (9999999999999998.0, "9999999999999998.0"),
        (1e16, "1e16"),
        (1.2345678901234568e17, "1.2345678901234568e17"),
        (5e-324, "5e-324"),
    ],
)
def test_float_rule_examples(x: float, text: str) -> None:
    # The table in protocol.md.
    assert msgspec.json.encode(x).decode() == text == foreign.format_float(x)
    assert f"| `{x!r}` | `{text}` |" in DOC.read_text()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": 2, "B": 3}, '{"B":3,"a":2,"b":1}'),
        ({"\uffff": 1, "\U0001f600": 2}, '{"\uffff":1,"\U0001f600":2}'),  # code point order
        ('\x00\x1f\x7f"\\/\n\t\u2028é', '"\\u0000\\u001f\x7f\\"\\\\/\\n\\t\u2028é"'),
        ([1, 1.0, True, None], "[1,1.0,true,null]"),
        (2**70, "1180591620717411303424"),
    ],
)
def test_canonical_json_rules(value: Any, text: str) -> None:
    encoder = msgspec.json.Encoder(order="sorted")
    assert encoder.encode(value).decode() == text == foreign.canonical_json(value)


# -- the worked example in protocol.md ----------------------------------------------------

EXAMPLE_KEYS = {"k1": b"s3cr3t-k1"}
EXAMPLE = Envelope(
    id="6f1c2a9e0d4b4e7f8a3b5c6d7e8f9012",
    name="protocol.add",
    args=[2, 3],
    sent_at=1700000000.25,
)


def test_worked_example_in_the_doc_is_what_the_code_computes() -> None:
    doc = DOC.read_text()
    codec = Codec(keys=EXAMPLE_KEYS)
    wire = codec.encode(EXAMPLE)
    canonical = canonical_bytes(EXAMPLE)
    signature = codec.decode(wire).signature
    assert signature is not None
    assert wire.decode() in doc
    assert canonical.decode() in doc
    assert signature.rpartition(":")[2] in doc
    assert Codec(format="msgpack", keys=EXAMPLE_KEYS).encode(EXAMPLE).hex() in doc
    assert f"({len(canonical)} bytes;" in doc
    assert f"({len(wire)} bytes, JSON)" in doc
    message = {"id": EXAMPLE.id, "name": EXAMPLE.name, "args": [2, 3], "sent_at": 1700000000.25}
    assert foreign.canonical_form(message) == canonical
    assert foreign.signature_of(message, "k1", EXAMPLE_KEYS["k1"]) == signature
