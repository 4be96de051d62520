"""docs/protocol.schema.json matches the code: same fields, same defaults, same messages."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from tests.messages.foreign import DEFAULTS
from tests.messages.strategies import INT64, TEXT, envelopes, json_values

from celeriac.errors import ProtocolError
from celeriac.messages import Codec, Envelope
from celeriac.tasks.outcome import ErrorInfo, Outcome, document_for, error_info
from celeriac.worker.boxchild import BoxRequest, BoxResponse, serve

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
KEYS = {"k1": b"first secret", "k2": b"second secret"}

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


REGISTRY: Registry[Any] = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))


def validator_for(name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``$defs/<name>`` (references resolve against the whole schema)."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{SCHEMA['$id']}#/$defs/{name}"}, registry=REGISTRY
    )


def assert_valid(validator: jsonschema.Draft202012Validator, instance: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, errors


def struct_defaults(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """Field -> default (as it appears on the wire), for fields that have one."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        if field.default is not msgspec.NODEFAULT:
            out[field.encode_name] = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            out[field.encode_name] = field.default_factory()
    return out


def struct_required(cls: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(cls) if f.required}


# -- the schema and the structs describe the same fields ----------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    ("schema", "cls"),
    [
        (SCHEMA, Envelope),
        (SCHEMA["$defs"]["Outcome"], Outcome),
        (SCHEMA["$defs"]["ErrorInfo"], ErrorInfo),
        (SCHEMA["$defs"]["BoxRequest"], BoxRequest),
        (SCHEMA["$defs"]["BoxReply"], BoxResponse),
    ],
    ids=["Envelope", "Outcome", "ErrorInfo", "BoxRequest", "BoxReply"],
)
def test_every_field_is_in_the_schema_and_vice_versa(
    schema: dict[str, Any], cls: type[msgspec.Struct]
) -> None:
    assert set(schema["properties"]) == set(cls.__struct_fields__)
    assert set(schema.get("required", [])) == struct_required(cls)
    documented = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    assert documented == struct_defaults(cls)


def test_foreign_client_defaults_are_the_envelope_defaults() -> None:
    # tests/messages/foreign.py copies its defaults from protocol.md, not from the code.
    assert struct_defaults(Envelope) == DEFAULTS


def test_defaults_keep_their_type() -> None:
    # 0.0, not 0: the canonical form writes a float field as a float.
    assert isinstance(SCHEMA["properties"]["sent_at"]["default"], float)


# -- everything celeriac writes is valid ----------------------------------------------------


@FAST
@given(envelope=envelopes(), signed=st.booleans())
def test_encoded_envelopes_are_valid(envelope: Envelope, signed: bool) -> None:
    keys = KEYS if signed else None
    as_json = json.loads(Codec(keys=keys).encode(envelope))
    assert_valid(VALIDATOR, as_json)
    as_msgpack = msgspec.msgpack.decode(Codec(format="msgpack", keys=keys).encode(envelope))
    assert_valid(VALIDATOR, as_msgpack)


error_infos = st.builds(
    ErrorInfo,
    type=TEXT,
    module=TEXT,
    message=TEXT,
    traceback=TEXT,
    args=st.lists(st.none() | st.booleans() | INT64 | TEXT, max_size=3),
)
outcomes = st.builds(
    Outcome,
    state=st.sampled_from(["STARTED", "SUCCESS", "FAILURE", "REVOKED"]),
    result=json_values,
    error=st.none() | error_infos,
    worker=st.none() | TEXT,
    runtime=st.none() | st.floats(min_value=0, max_value=1e6),
)


@FAST
@given(task=envelopes(), outcome=outcomes)
def test_result_documents_are_valid(task: Envelope, outcome: Outcome) -> None:
    document = json.loads(Codec(keys=KEYS).encode(document_for(task, outcome)))
    assert_valid(validator_for("ResultDocument"), document)


def test_real_errors_are_valid_error_infos() -> None:
    class Odd(Exception):
        pass

    for exc in [ValueError("bad"), KeyError("k"), OSError(2, "gone"), Odd(object()), Odd()]:
        try:
            raise exc
        except Exception as caught:
            info = json.loads(msgspec.json.encode(error_info(caught)))
        assert_valid(validator_for("ErrorInfo"), info)


def test_a_command_is_not_a_result_document() -> None:
    command = json.loads(Codec().encode(Envelope(id="a", name="n")))
    assert not validator_for("ResultDocument").is_valid(command)


# -- everything the schema accepts, celeriac accepts ------------------------------------------

# What the schema adds for senders beyond what a receiver checks: ranges, the two
# content types and the signature's shape. (A receiver with no key ignores the
# signature; one with keys rejects a malformed one.)
SENDER_ONLY = {"minimum", "maximum", "enum", "pattern", "const"}


def _no_integral_floats(value: Any) -> bool:
    # JSON Schema calls 1.0 an integer; the protocol (and msgspec) does not.
    return not (isinstance(value, float) and value.is_integer())


@st.composite
def foreign_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message as another program might write it: optional fields left out,
    spelled out as their default, or given a value; then maybe one field mangled."""
    envelope = draw(envelopes())
    full = msgspec.structs.asdict(envelope)
    message: dict[str, Any] = {"id": full["id"], "name": full["name"]}
    for field in DEFAULTS:
        if field == "signature":
            continue
        how = draw(st.sampled_from(["absent", "default", "value"]))
        if how == "default":
            message[field] = DEFAULTS[field]
        elif how == "value":
            message[field] = full[field]
    if draw(st.booleans()):
        field = draw(st.sampled_from(sorted({"id", "name", *DEFAULTS})))
        message[field] = draw(json_values.filter(_no_integral_floats))
    if draw(st.booleans()):
        message[draw(st.text(min_size=1, max_size=8))] = draw(
            json_values.filter(_no_integral_floats)
        )
    order = draw(st.permutations(list(message)))
    return {key: message[key] for key in order}


def _accepted(message: dict[str, Any]) -> bool:
    try:
        Codec().decode(json.dumps(message).encode())
    except ProtocolError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=foreign_messages())
def test_schema_and_decoder_agree(message: dict[str, Any]) -> None:
    schema_errors = list(VALIDATOR.iter_errors(message))
    accepted = _accepted(message)
    if not schema_errors:
        assert accepted, f"schema-valid message rejected: {message!r}"
    elif accepted:
        # The receiver is more lenient only where the schema states a sender's duty.
        kinds = {error.validator for error in schema_errors}
        assert kinds <= SENDER_ONLY, [e.message for e in schema_errors]


@pytest.mark.parametrize(
    "message",
    [
        {"name": "no id"},
        {"id": "no name"},
        {"id": 1, "name": "n"},
        {"id": "a", "name": "n", "args": {"not": "a list"}},
        {"id": "a", "name": "n", "kwargs": []},
        {"id": "a", "name": "n", "headers": {"k": 1}},
        {"id": "a", "name": "n", "kind": "query"},
        {"id": "a", "name": "n", "eta": "tomorrow"},
        {"id": "a", "name": "n", "attempt": 1.5},
        {"id": "a", "name": "n", "ignore_result": 0},
        {"id": "a", "name": "n", "args": None},
        {"id": "a", "name": "n", "signature": 5},
    ],
)
def test_both_reject_wrong_types(message: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(message)
    assert not _accepted(message)


def test_version_other_than_1_is_invalid() -> None:
    assert VALIDATOR.is_valid({"id": "a", "name": "n", "v": 1})
    assert not VALIDATOR.is_valid({"id": "a", "name": "n", "v": 2})


def test_unknown_fields_are_allowed() -> None:
    message = {"id": "a", "name": "n", "x-future": {"any": "thing"}}
    assert VALIDATOR.is_valid(message)
    assert _accepted(message)


# -- the boxed-task stdio protocol --------------------------------------------------------


def test_box_lines_are_valid() -> None:
    requests = [
        BoxRequest(id="1", module="operator", qualname="add", args=[2, 3]),
        BoxRequest(id="2", module="json", qualname="loads", args=["{"]),
        BoxRequest(id="3", module="builtins", qualname="dict", kwargs={"a": 1}),
    ]
    data = b"".join(msgspec.json.encode(r) + b"\n" for r in requests)
    for line in data.splitlines():
        assert_valid(validator_for("BoxRequest"), json.loads(line))
    replies = io.BytesIO()
    serve(io.BytesIO(data), replies)
    ready, *answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert_valid(validator_for("BoxReady"), ready)
    assert [a["id"] for a in answers] == ["1", "2", "3"]
    for answer in answers:
        assert_valid(validator_for("BoxReply"), answer)
    assert answers[0] == {"id": "1", "ok": True, "result": 5}
    assert answers[1]["ok"] is False
    assert answers[1]["error"]["type"] == "JSONDecodeError"
    assert answers[2] == {"id": "3", "ok": True, "result": {"a": 1}}
