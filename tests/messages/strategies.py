"""Hypothesis strategies for envelopes and the values they carry."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from celeriac.messages import JSON, MSGPACK, Envelope

# The portable JSON data model: what every language can carry. Integers stay in
# the int64 range (msgpack has no bigger integers), floats are finite.
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=10)
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | TEXT

json_values: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)

timestamps = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)
optional_text = st.none() | TEXT


def _or_default(default: Any, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Half of the time the default: it is omitted on the wire, which must round-trip too.
    return st.just(default) | values


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """Any valid envelope; each optional field is its default or a drawn value."""
    return Envelope(
        id=draw(st.text(min_size=1, max_size=40)),
        name=draw(st.text(min_size=1, max_size=40)),
        kind=draw(st.sampled_from(["command", "event", "document"])),
        args=draw(_or_default([], st.lists(json_values, max_size=3))),
        kwargs=draw(_or_default({}, st.dictionaries(TEXT, json_values, max_size=3))),
        headers=draw(_or_default({}, st.dictionaries(TEXT, TEXT, max_size=3))),
        eta=draw(st.none() | timestamps),
        expires=draw(st.none() | timestamps),
        attempt=draw(_or_default(0, st.integers(min_value=0, max_value=2**63 - 1))),
        priority=draw(st.integers(min_value=0, max_value=9)),
        queue=draw(_or_default("default", TEXT)),
        correlation_id=draw(optional_text),
        causation_id=draw(optional_text),
        traceparent=draw(optional_text),
        tracestate=draw(optional_text),
        content_type=draw(st.sampled_from([JSON, MSGPACK])),
        ignore_result=draw(st.booleans()),
        body=draw(_or_default(None, json_values)),
        sent_at=draw(_or_default(0.0, timestamps)),
    )


# For each envelope field, values a sender might put there (to change one field).
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(min_size=1, max_size=40),
    "name": st.text(min_size=1, max_size=40),
    "kind": st.sampled_from(["command", "event", "document"]),
    "v": st.just(1),
    "args": st.lists(json_values, max_size=3),
    "kwargs": st.dictionaries(TEXT, json_values, max_size=3),
    "headers": st.dictionaries(TEXT, TEXT, max_size=3),
    "eta": st.none() | timestamps,
    "expires": st.none() | timestamps,
    "attempt": st.integers(min_value=0, max_value=2**63 - 1),
    "priority": st.integers(min_value=0, max_value=9),
    "queue": TEXT,
    "correlation_id": optional_text,
    "causation_id": optional_text,
    "traceparent": optional_text,
    "tracestate": optional_text,
    "content_type": st.sampled_from([JSON, MSGPACK]),
    "ignore_result": st.booleans(),
    "body": json_values,
    "sent_at": timestamps,
}
