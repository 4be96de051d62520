"""The NATS backends' layout and settings: URL options, names, stream configurations.

One *namespace* (URL option ``namespace``, default ``celeriac``) is a set of
streams and key-value buckets on the server, listed by :class:`Names`; several
apps (or tests) share a server in namespaces of their own. Queue names, message
ids and worker names become subject tokens through :func:`token`, reversibly.
"""

from __future__ import annotations

import base64
import re
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError, ConfigurationError

__all__ = [
    "BROKER_OPTIONS",
    "Receipt",
    "nanos",
    "receipt",
    "JetStreamError",
    "Names",
    "NatsOptions",
    "Request",
    "kv_stream",
    "status_of",
    "stream_config",
    "token",
    "untoken",
]

#: one request of a pipelined batch: subject, payload, headers
Request = tuple[str, bytes, "dict[str, str] | None"]

#: options only the broker reads; a sink opened on the broker's URL ignores them
BROKER_OPTIONS = ("visibility_timeout", "max_deliveries", "dedup_window", "poll_interval")

_SAFE = re.compile(r"[A-Za-z0-9_-]{1,240}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def token(name: str) -> str:
    """``name`` as one subject token (also a consumer name or KV key), reversibly.

    Names made of letters, digits, ``-`` and ``_`` stand for themselves; any other
    name becomes ``=`` followed by its UTF-8 in unpadded URL-safe base64.
    """
    if _SAFE.fullmatch(name):
        return name
    return "=" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def untoken(tok: str) -> str:
    """The name :func:`token` made ``tok`` from (``tok`` itself if it is not one)."""
    if not tok.startswith("="):
        return tok
    raw = tok[1:]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError:  # also binascii.Error, UnicodeDecodeError: an id set by someone else
        return tok


class Names:
    """The streams, buckets and subjects of one namespace.

    Streams ``<ns>_tasks`` (subjects ``<ns>.q.<queue>.<priority>``), ``<ns>_delayed``
    (``<ns>.d.<queue>.<priority>``) and ``<ns>_dead`` (``<ns>.dead.<id>``); key-value
    buckets ``<ns>_revoked``, ``<ns>_workers`` and ``<ns>_results``; core subjects
    ``<ns>.bell.<queue>`` (no stream) to wake waiting consumers.
    """

    def __init__(self, namespace: str) -> None:
        ns = self.ns = namespace
        self.tasks = f"{ns}_tasks"
        self.delayed = f"{ns}_delayed"
        self.dead = f"{ns}_dead"
        self.revoked = f"{ns}_revoked"
        self.workers = f"{ns}_workers"
        self.results = f"{ns}_results"

    def task(self, queue: str, priority: int) -> str:
        """The work-stream subject of ``queue`` at ``priority``."""
        return f"{self.ns}.q.{token(queue)}.{priority}"

    def delay(self, queue: str, priority: int) -> str:
        """The delay-stream subject of ``queue`` at ``priority``."""
        return f"{self.ns}.d.{token(queue)}.{priority}"

    def dead_letter(self, id: str) -> str:
        """The dead-letter subject of message ``id``."""
        return f"{self.ns}.dead.{token(id)}"

    def bell(self, queue: str) -> str:
        """The core subject rung when messages of ``queue`` became due without a publish."""
        return f"{self.ns}.bell.{token(queue)}"

    @staticmethod
    def key(bucket: str, name: str) -> str:
        """The subject of key ``name`` in key-value ``bucket``."""
        return f"$KV.{bucket}.{token(name)}"


class Receipt(NamedTuple):
    """A delivery's receipt: its ack subject, parsed once (hashable, one per delivery)."""

    subject: str
    consumer: str
    delivered: int  # deliveries of this stream message, as the server counts them
    stream_seq: int
    delivery_seq: int  # the consumer sequence: a new one for every delivery


def receipt(reply: str) -> Receipt:
    """The :class:`Receipt` of a JetStream ack subject (``$JS.ACK...``)."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<count>.<sseq>.<dseq>.<ts>.<pending>
        return Receipt(reply, t[3], int(t[4]), int(t[5]), int(t[6]))
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<count>.<sseq>.<dseq>.<ts>.<pending>...
    return Receipt(reply, t[5], int(t[6]), int(t[7]), int(t[8]))


def nanos(seconds: float) -> int:
    """``seconds`` as the whole nanoseconds (at least 1) JetStream durations are given in."""
    return max(1, int(seconds * 1e9))


def status_of(msg: Msg) -> str | None:
    """The status code of a server status message (``"404"``...), or None for data."""
    headers = msg.headers
    return headers.get("Status") if headers else None


class NatsOptions:
    """What a ``nats://`` URL says, checked (see ``docs/brokers.md``)."""

    def __init__(self, parsed: BackendURL) -> None:
        if parsed.path not in ("", "/"):
            raise ConfigurationError(
                f"{parsed.url!r}: a nats:// URL has no path; name a namespace with ?namespace="
            )
        tls = parsed.choice("tls", "false", ("true", "false"))
        scheme = "tls" if tls == "true" else "nats"
        self.server = f"{scheme}://{parsed.host or '127.0.0.1'}:{parsed.port or 4222}"
        self.tls = tls == "true"
        self.user = parsed.username
        self.password = parsed.password
        self.namespace = parsed.text("namespace", "celeriac")
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigurationError(
                f"{parsed.url!r}: namespace must be 1-32 letters, digits, '-' or '_'"
            )
        self.storage = parsed.choice("storage", "file", ("file", "memory"))
        self.replicas = parsed.integer("replicas", 1, minimum=1)
        self.request_timeout = parsed.number("request_timeout", 5.0, minimum=0.01)
        self.connect_timeout = parsed.number("connect_timeout", 5.0, minimum=0.1)
        self.reconnect_wait = parsed.number("reconnect_wait", 0.25, minimum=0.01)
        self.ping_interval = parsed.number("ping_interval", 10.0, minimum=1.0)
        #: the URL without credentials, for messages and logs
        self.display = f"{self.server}/?namespace={self.namespace}"


def stream_config(
    name: str, subjects: list[str], options: NatsOptions, **extra: Any
) -> dict[str, Any]:
    """A stream's configuration (as the JetStream API takes it) with our defaults."""
    config: dict[str, Any] = {
        "name": name,
        "subjects": subjects,
        "retention": "limits",
        "storage": options.storage,
        "num_replicas": options.replicas,
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "max_msg_size": -1,
    }
    config.update(extra)
    return config


def kv_stream(bucket: str, options: NatsOptions) -> dict[str, Any]:
    """The stream behind a JetStream key-value bucket, laid out as ``nats kv add`` does."""
    return stream_config(
        f"KV_{bucket}",
        [f"$KV.{bucket}.>"],
        options,
        max_msgs_per_subject=1,
        discard="new",
        deny_delete=True,
        allow_rollup_hdrs=True,
        allow_direct=True,
        duplicate_window=120_000_000_000,
    )


class JetStreamError(BrokerError):
    """The JetStream API answered with an error."""

    def __init__(self, message: str, code: int, err_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
