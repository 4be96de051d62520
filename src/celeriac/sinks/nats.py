"""``nats://``: a data sink in a JetStream key-value bucket, through ``nats-py``.

Documents live in the bucket ``<namespace>_results`` (a KV bucket as ``nats kv``
makes it: one key per document id, history 1). The value is the document's body;
its state and expiry travel in headers (``Celeriac-State``, ``Celeriac-Expires``).

* ``store``: pipelined KV puts, one round trip per batch.
* ``store_if_absent``: a put that the server accepts only if the key has no value
  (``Nats-Expected-Last-Subject-Sequence: 0``); where one exists but has expired
  (or was deleted), a second put expects exactly that value's sequence, so a
  document written meanwhile by someone else is never replaced.
* ``get``: pipelined direct gets of each key's last value.
* ``forget``: KV purge markers (``KV-Operation: PURGE`` with a roll-up).
* ``wait``: the first wait subscribes (core NATS) to the bucket's subjects and keeps
  that watch while the sink is open. It reads each id once; afterwards only ids
  the watch saw written are read again, so waiting on many results costs about
  one read per stored result, not one per id per poll. The watch sees every store
  of the namespace; after a reconnection everything is read again.

Expiry is checked on read (per-key TTLs need NATS 2.11); an expired document found
by ``get`` is purged then. URL options as for the broker (``namespace``, ``storage``,
``replicas``...; see :mod:`celeriac.brokers.nats`); the broker's own options are
accepted and ignored, so one URL serves both.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Sequence

import anyio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from celeriac.abc import StoredDocument
from celeriac.brokers._hub import Hub
from celeriac.brokers._nats import (
    BROKER_OPTIONS,
    Names,
    NatsOptions,
    Request,
    kv_stream,
    status_of,
    token,
    untoken,
)
from celeriac.brokers._nats_client import NatsConnection
from celeriac.brokers._url import BackendURL
from celeriac.errors import BrokerError

__all__ = ["NatsSink"]

_WRONG_LAST_SEQUENCE = 10071  # JetStream err_code of a failed expected-sequence put
_KNOWN_LIMIT = 100_000


class NatsSink:
    """A data sink in a JetStream key-value bucket (see the module docstring)."""

    def __init__(self, url: str, hub: Hub | None = None) -> None:
        parsed = BackendURL(url)
        self.url = url
        self._options = NatsOptions(parsed)
        parsed.ignore(*BROKER_OPTIONS)  # the same URL often names the broker too
        parsed.finish()
        names = Names(self._options.namespace)
        self._bucket = names.results
        self._stream = f"KV_{names.results}"
        self._conn = NatsConnection(self._options, "celeriac-sink")
        self._connected = False
        self._epoch = -1
        # the watch (client loop): ids whose last read is still current, and waiters
        self._watch: Subscription | None = None
        self._watching = -1  # the connection epoch of what _known says
        self._known: OrderedDict[str, tuple[StoredDocument, float] | None] = OrderedDict()
        self._reading: dict[str, int] = {}  # id -> reads under way
        self._dirty: set[str] = set()  # ids written while a read of them was under way
        self._waiters: list[tuple[frozenset[str], asyncio.Event]] = []

    def __repr__(self) -> str:
        return f"<NatsSink {self._options.display!r}>"

    async def connect(self) -> None:
        """Connect and create the bucket if missing."""
        if not self._connected:
            await self._conn.open(self._setup)
            self._connected = True

    async def _setup(self) -> None:
        await self._ready()

    async def _ready(self) -> None:
        """Create the bucket, again after a reconnection (a server may have lost it)."""
        if self._epoch != self._conn.epoch:
            epoch = self._conn.epoch
            await self._conn.ensure_stream(kv_stream(self._bucket, self._options))
            self._epoch = epoch

    async def _publish(self, items: list[Request]) -> None:
        await self._ready()
        await self._conn.publish(items)

    async def close(self) -> None:
        """Close the connection."""
        self._connected = False
        self._watch = None
        await self._conn.close()

    # -- writes -----------------------------------------------------------------------------

    def _put(self, doc: StoredDocument, ttl: float | None, expect: int | None) -> Request:
        headers = {"Celeriac-State": token(doc.state)}
        if ttl is not None:
            headers["Celeriac-Expires"] = repr(time.time() + ttl)
        if expect is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        return (Names.key(self._bucket, doc.id), doc.body, headers)

    async def store(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write (upsert) ``documents``, each expiring after ``ttl`` seconds."""
        if documents:
            items = [self._put(doc, ttl, None) for doc in documents]
            await self._conn.run(self._publish, items)

    async def store_if_absent(self, documents: Sequence[StoredDocument], ttl: float | None) -> None:
        """Write each document only where no live document with its id exists."""
        if documents:
            await self._conn.run(self._store_if_absent, documents, ttl)

    async def _store_if_absent(
        self, documents: Sequence[StoredDocument], ttl: float | None
    ) -> None:
        await self._ready()
        docs = list({doc.id: doc for doc in reversed(documents)}.values())[::-1]
        replies = await self._conn.requests([self._put(doc, ttl, 0) for doc in docs])
        taken = [doc for doc, reply in zip(docs, replies, strict=True) if self._refused(reply)]
        if not taken:
            return
        queries = [{"last_by_subj": Names.key(self._bucket, doc.id)} for doc in taken]
        current = await self._conn.direct_get(self._stream, queries)
        now, retry = time.time(), []
        for doc, msg in zip(taken, current, strict=True):
            if msg is None:  # purged meanwhile: nothing there
                retry.append(self._put(doc, ttl, 0))
            elif self._dead(msg, now):  # expired or deleted
                seq = int((msg.headers or {}).get("Nats-Sequence", 0))
                retry.append(self._put(doc, ttl, seq))
        for reply in await self._conn.requests(retry):
            self._refused(reply)  # refused again: a live document was written meanwhile

    def _refused(self, reply: Msg) -> bool:
        """Whether a conditional put was refused because the key has a value."""
        if status_of(reply) is not None:
            raise BrokerError(f"{self._options.display}: write failed (status {status_of(reply)})")
        if b'"error"' not in reply.data:
            return False
        error = json.loads(reply.data).get("error", {})
        if int(error.get("err_code", 0)) == _WRONG_LAST_SEQUENCE:
            return True
        raise BrokerError(f"{self._options.display}: write failed: {error}")

    @staticmethod
    def _dead(msg: Msg, now: float) -> bool:
        """Whether a key's last value is no live document (deleted or expired)."""
        headers = msg.headers or {}
        if headers.get("KV-Operation") or "Celeriac-State" not in headers:
            return True
        return float(headers.get("Celeriac-Expires", "inf")) <= now

    async def forget(self, ids: Sequence[str]) -> None:
        """Delete these documents."""
        if ids:
            headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
            items = [(Names.key(self._bucket, id), b"", headers) for id in dict.fromkeys(ids)]
            await self._conn.run(self._publish, items)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The stored documents among ``ids``."""
        if not ids:
            return {}
        return await self._conn.run(self._get, ids)

    async def _get(self, ids: Sequence[str]) -> dict[str, StoredDocument]:
        await self._ready()
        now = time.time()
        return {id: doc for id, (doc, until) in (await self._read(ids)).items() if until > now}

    async def _read(self, ids: Sequence[str]) -> dict[str, tuple[StoredDocument, float]]:
        """The last value of each id's key, with its expiry (inf: never); expired ones purged."""
        wanted = list(dict.fromkeys(ids))
        queries = [{"last_by_subj": Names.key(self._bucket, id)} for id in wanted]
        now, found, expired = time.time(), {}, []
        for id, msg in zip(wanted, await self._conn.direct_get(self._stream, queries), strict=True):
            headers = (msg.headers or {}) if msg is not None else {}
            if msg is None or headers.get("KV-Operation") or "Celeriac-State" not in headers:
                continue
            until = float(headers.get("Celeriac-Expires", "inf"))
            if until <= now:
                expired.append(msg)
                continue
            found[id] = (StoredDocument(id, untoken(headers["Celeriac-State"]), msg.data), until)
        if expired:
            await self._purge(expired)
        return found

    async def _purge(self, msgs: list[Msg]) -> None:
        subject = f"$JS.API.STREAM.PURGE.{self._stream}"
        items: list[Request] = []
        for msg in msgs:  # up to that value only: a newer one stays
            headers = msg.headers or {}
            body = {"filter": headers["Nats-Subject"], "seq": int(headers["Nats-Sequence"]) + 1}
            items.append((subject, json.dumps(body).encode(), None))
        await self._conn.requests(items)

    async def wait(
        self, ids: Sequence[str], timeout: float, states: frozenset[str]
    ) -> dict[str, StoredDocument]:
        """The documents among ``ids`` in ``states``, waiting up to ``timeout`` for one."""
        if not ids:
            await anyio.sleep(timeout)
            return {}
        return await self._conn.run(self._wait, list(dict.fromkeys(ids)), timeout, states)

    async def _wait(
        self, ids: list[str], timeout: float, states: frozenset[str]
    ) -> dict[str, StoredDocument]:
        await self._ready()
        if self._watch is None:
            self._watching = self._conn.epoch
            subject = f"$KV.{self._bucket}.>"
            self._watch = await self._conn.client.subscribe(subject, cb=self._on_write)
        deadline = time.monotonic() + timeout
        changed = asyncio.Event()
        waiter = (frozenset(ids), changed)
        self._waiters.append(waiter)
        try:
            while True:
                changed.clear()
                found = await self._read_known(ids, states)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                with anyio.move_on_after(left) as waited:  # not wait_for: see brokers/nats.py
                    await changed.wait()
                if waited.cancelled_caught:
                    return {}
        finally:
            self._waiters.remove(waiter)

    async def _read_known(
        self, ids: list[str], states: frozenset[str]
    ) -> dict[str, StoredDocument]:
        """The wanted documents, reading only ids not read since their last write."""
        known = self._known
        if self._watching != self._conn.epoch:  # reconnected: writes meanwhile were not seen
            known.clear()
            self._watching = self._conn.epoch
        unknown = [id for id in ids if id not in known]
        if unknown:
            reading, dirty = self._reading, self._dirty
            for id in unknown:
                reading[id] = reading.get(id, 0) + 1
            try:
                got = await self._read(unknown)
                for id in unknown:
                    if id not in dirty:  # not written while it was being read
                        known[id] = got.get(id)
            finally:
                for id in unknown:
                    reading[id] -= 1
                    if not reading[id]:
                        del reading[id]
                        dirty.discard(id)
            while len(known) > _KNOWN_LIMIT:
                known.popitem(last=False)
        else:
            got = {}
        now, found = time.time(), {}
        for id in ids:
            entry = got[id] if id in got else known.get(id)
            if entry is not None and entry[1] > now and entry[0].state in states:
                found[id] = entry[0]
        return found

    async def _on_write(self, msg: Msg) -> None:
        id = untoken(msg.subject.split(".", 2)[2])
        self._known.pop(id, None)
        if id in self._reading:
            self._dirty.add(id)
        for ids, changed in self._waiters:
            if id in ids:
                changed.set()
