"""A celeriac client written from ``docs/protocol.md`` alone, with the standard library.

Nothing here imports celeriac: this is what a program in another language does to
publish a task on the embedded (SQLite) transport, sign it, and read its result.
The tests compare it with celeriac's own codec (``test_codec.py``) and drive a real
worker with it (``tests/test_raw_protocol.py``), so the document and the code
cannot drift apart unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import sqlite3
import time
from typing import Any

__all__ = [
    "DEFAULTS",
    "TERMINAL",
    "canonical_form",
    "canonical_json",
    "connect",
    "dead_letters",
    "encode",
    "format_float",
    "publish",
    "sign",
    "signature_of",
    "wait_result",
]

# protocol.md, "Envelope fields": every optional field and its default.
DEFAULTS: dict[str, Any] = {
    "kind": "command",
    "v": 1,
    "args": [],
    "kwargs": {},
    "headers": {},
    "eta": None,
    "expires": None,
    "attempt": 0,
    "priority": 0,
    "queue": "default",
    "correlation_id": None,
    "causation_id": None,
    "traceparent": None,
    "tracestate": None,
    "content_type": "application/json",
    "ignore_result": False,
    "body": None,
    "sent_at": 0.0,
    "signature": None,
}
FIELDS = {"id", "name", *DEFAULTS}
FLOAT_FIELDS = ("eta", "expires", "sent_at")
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


# -- the canonical form (protocol.md, "Signing") ----------------------------------------


def format_float(x: float) -> str:
    """A float as the canonical form writes it: shortest round-trip digits, with a
    fixed point for decimal exponents -5..15 and ``d.ddde<exp>`` otherwise."""
    if not math.isfinite(x):
        raise ValueError("NaN and infinities have no JSON form")
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")  # repr: shortest round trip
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    digits = significant.rstrip("0")
    if not digits:
        return sign + "0.0"
    exp10 = point - 1
    if -5 <= exp10 < 16:
        if point <= 0:
            text = "0." + "0" * -point + digits
        elif point >= len(digits):
            text = digits + "0" * (point - len(digits)) + ".0"
        else:
            text = digits[:point] + "." + digits[point:]
    else:
        text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + f"e{exp10}"
    return sign + text


def canonical_json(value: Any) -> str:
    """JSON with object keys sorted by code point, no whitespace, minimal escapes."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{canonical_json(k)}:{canonical_json(v)}" for k, v in items) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def canonical_form(message: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every v1 field (defaults filled in) but ``signature``."""
    full = {**DEFAULTS, **{k: v for k, v in message.items() if k in FIELDS}}
    del full["signature"]
    for field in FLOAT_FIELDS:  # float fields are floats, even if written as 3
        if full[field] is not None:
            full[field] = float(full[field])
    return canonical_json(full).encode("utf-8")


def signature_of(message: dict[str, Any], kid: str, secret: bytes) -> str:
    """``hmac-sha256:<kid>:<hex>`` for ``message``."""
    digest = hmac.new(secret, canonical_form(message), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{kid}:{digest}"


def sign(message: dict[str, Any], kid: str, secret: bytes) -> dict[str, Any]:
    """A copy of ``message`` carrying its signature."""
    return {**message, "signature": signature_of(message, kid, secret)}


def encode(message: dict[str, Any]) -> bytes:
    """The message as JSON bytes (any valid JSON spelling will do on the wire)."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False).encode("utf-8")


# -- the embedded transport (protocol.md, "The embedded SQLite transport") -------------


def connect(path: str) -> sqlite3.Connection:
    """A connection that waits for the write lock instead of failing at once."""
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def publish(
    path: str,
    body: bytes | str,
    *,
    msg_id: str,
    queue: str = "default",
    priority: int = 0,
    available_at: float = 0.0,
) -> None:
    """Insert one message (``body`` is the envelope; bytes are bound as a BLOB)."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO celeriac_messages (msg_id, queue, priority, available_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (msg_id, queue, priority, available_at, body),
            )
            conn.execute("INSERT OR IGNORE INTO celeriac_queues (name) VALUES (?)", (queue,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def wait_result(path: str, task_id: str, timeout: float) -> dict[str, Any] | None:
    """The parsed result document of ``task_id`` once terminal, or None at timeout."""
    conn = connect(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(
                "SELECT state, body FROM celeriac_documents"
                " WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (task_id, time.time()),
            ).fetchone()
            if row is not None and row[0] in TERMINAL:
                document: dict[str, Any] = json.loads(row[1])
                return document
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)
    finally:
        conn.close()


def dead_letters(path: str) -> dict[str, str]:
    """Dead letters: message id -> reason."""
    conn = connect(path)
    try:
        rows = conn.execute("SELECT id, reason FROM celeriac_dead_letters ORDER BY seq").fetchall()
    finally:
        conn.close()
    return {msg_id: reason for msg_id, reason in rows}
