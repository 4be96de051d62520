"""What the NATS broker keeps besides messages: dead letters, revocations, heartbeats.

Everything here runs in the client's loop (see :mod:`celeriac.brokers._nats_client`).

* **Dead letters**: stream ``<ns>_dead``, one subject per message id holding at
  most one message, so a message dead-lettered again replaces its earlier letter
  and becomes the newest. The body is the original body, unchanged; the header
  ``Celeriac-Dead`` (JSON) holds id, queue, priority, reason, time and deliveries.
  Listing reads backwards from the last sequence with pipelined direct gets.
* **Revocations**: key-value bucket ``<ns>_revoked``; key = message id, value =
  when the revocation expires (unix time). The cursor of ``revoked_since`` is the
  bucket's stream sequence, so a poll that finds nothing new is one request.
* **Workers**: key-value bucket ``<ns>_workers``; key = worker name, value = the
  :class:`~celeriac.abc.WorkerInfo` as JSON, its expiry in a header.

Expiry is checked when reading (per-key TTLs need NATS 2.11); entries found
expired by a full read are purged then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg

from celeriac.abc import DeadLetter, Delivery, WorkerInfo
from celeriac.brokers._nats import Names, Request, untoken
from celeriac.brokers._nats_client import NatsConnection
from celeriac.errors import BrokerError

__all__ = ["Records"]

_INFO = msgspec.json.Decoder(WorkerInfo)
_MARKERS = ("DEL", "PURGE")  # KV-Operation of a deleted key


def _key_of(msg: Msg) -> str:
    subject = (msg.headers or {}).get("Nats-Subject", msg.subject)
    return untoken(subject.rsplit(".", 1)[-1])


def _is_marker(msg: Msg) -> bool:
    return (msg.headers or {}).get("KV-Operation") in _MARKERS


class Records:
    """Dead letters, revocations and heartbeats of one namespace (module docstring)."""

    def __init__(self, conn: NatsConnection, names: Names) -> None:
        self._conn = conn
        self._names = names
        self.revoked: dict[str, float] = {}  # id -> expiry: what fetch filters out
        self._revoked_seq = 0

    # -- dead letters -----------------------------------------------------------------------

    async def bury(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """Store these deliveries as dead letters (the caller then acks them)."""
        at = time.time()
        items: list[Request] = []
        for d in deliveries:
            meta = {
                "id": d.id,
                "queue": d.queue,
                "priority": d.priority,
                "reason": reason,
                "at": at,
                "deliveries": d.deliveries,
            }
            items.append(
                (self._names.dead_letter(d.id), d.body, {"Celeriac-Dead": json.dumps(meta)})
            )
        await self._conn.publish(items)

    @staticmethod
    def _letter(msg: Msg) -> tuple[dict[str, Any], DeadLetter]:
        meta: dict[str, Any] = json.loads((msg.headers or {}).get("Celeriac-Dead", "{}"))
        letter = DeadLetter(
            id=str(meta.get("id", _key_of(msg))),
            queue=str(meta.get("queue", "")),
            body=msg.data,
            reason=str(meta.get("reason", "")),
            at=float(meta.get("at", 0.0)),
            deliveries=int(meta.get("deliveries", 0)),
        )
        return meta, letter

    async def letters(self, limit: int) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        stream = self._names.dead
        state = (await self._conn.api(f"STREAM.INFO.{stream}")).get("state", {})
        first, high = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        out: list[DeadLetter] = []
        window = max(2 * limit, 16)
        while limit > 0 and int(state.get("messages", 0)) and high >= max(first, 1):
            low = max(first, high - window + 1, 1)
            got = await self._conn.direct_get(
                stream, [{"seq": s} for s in range(high, low - 1, -1)]
            )
            out += [self._letter(m)[1] for m in got if m is not None]
            if len(out) >= limit:
                break
            high, window = low - 1, window * 2
        return out[:limit]

    async def exhume(self, ids: Sequence[str]) -> list[tuple[DeadLetter, int, int]]:
        """The dead letters of these ids (each once), with priority and stream sequence."""
        wanted = list(dict.fromkeys(ids))
        queries = [{"last_by_subj": self._names.dead_letter(id)} for id in wanted]
        found = []
        for msg in await self._conn.direct_get(self._names.dead, queries):
            if msg is not None:
                meta, letter = self._letter(msg)
                seq = int((msg.headers or {}).get("Nats-Sequence", 0))
                found.append((letter, int(meta.get("priority", 0)), seq))
        return found

    async def forget_letters(self, ids: Sequence[str]) -> None:
        """Delete the dead letters of these ids."""
        subject = f"$JS.API.STREAM.PURGE.{self._names.dead}"
        items: list[Request] = [
            (subject, json.dumps({"filter": self._names.dead_letter(id)}).encode(), None)
            for id in dict.fromkeys(ids)
        ]
        for reply in await self._conn.requests(items):
            if b'"error"' in reply.data:
                raise BrokerError(f"{self._conn.options.display}: {reply.data.decode()}")

    async def purge_letters(self) -> int:
        """Delete all dead letters; return how many."""
        answer = await self._conn.api(f"STREAM.PURGE.{self._names.dead}")
        return int(answer.get("purged", 0))

    # -- revocations ------------------------------------------------------------------------

    async def revoke(self, ids: Sequence[str], ttl: float) -> None:
        """Record ``ids`` as revoked until ``ttl`` seconds from now."""
        until = repr(time.time() + ttl).encode()
        bucket = self._names.revoked
        await self._conn.publish(
            [(Names.key(bucket, id), until, None) for id in dict.fromkeys(ids)]
        )

    async def revoked_since(self, after: int) -> tuple[list[str], int]:
        """Ids revoked (and not expired) after stream sequence ``after``; the new cursor."""
        msgs, last = await self._conn.read_after(f"KV_{self._names.revoked}", after)
        now, ids, expired = time.time(), [], []
        for msg in msgs:
            if _is_marker(msg):
                continue
            until = float(msg.data or 0)
            if until > now:
                ids.append(_key_of(msg))
                self.revoked[ids[-1]] = until
            else:
                expired.append(msg)
        if after == 0 and expired:
            await self._sweep(f"KV_{self._names.revoked}", expired)
        return ids, last

    async def refresh_revoked(self) -> None:
        """Bring :attr:`revoked` (what fetch drops) up to date; forget expired ids."""
        _, self._revoked_seq = await self.revoked_since(self._revoked_seq)
        now = time.time()
        if len(self.revoked) > 1000 or any(until <= now for until in self.revoked.values()):
            self.revoked = {id: until for id, until in self.revoked.items() if until > now}

    def is_revoked(self, id: str) -> bool:
        """Whether ``id`` is revoked now (as of the last :meth:`refresh_revoked`)."""
        until = self.revoked.get(id)
        return until is not None and until > time.time()

    async def _sweep(self, stream: str, msgs: Sequence[Msg]) -> None:
        subject = f"$JS.API.STREAM.PURGE.{stream}"
        items: list[Request] = []
        for msg in msgs:
            key = (msg.headers or {}).get("Nats-Subject", msg.subject)
            seq = int((msg.headers or {}).get("Nats-Sequence", 0))
            # only up to this entry: a newer one of the same key stays
            body = {"filter": key, "seq": seq + 1}
            items.append((subject, json.dumps(body).encode(), None))
        await self._conn.requests(items)

    # -- workers ----------------------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Record that a worker is alive for ``ttl`` seconds."""
        headers = {"Celeriac-Expires": repr(time.time() + ttl)}
        subject = Names.key(self._names.workers, info.name)
        await self._conn.publish([(subject, msgspec.json.encode(info), headers)])

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired, by name."""
        stream = f"KV_{self._names.workers}"
        msgs, _ = await self._conn.read_after(stream, 0)
        now, live, expired = time.time(), [], []
        for msg in msgs:
            if _is_marker(msg):
                continue
            if float((msg.headers or {}).get("Celeriac-Expires", 0)) <= now:
                expired.append(msg)
                continue
            try:
                live.append(_INFO.decode(msg.data))
            except msgspec.DecodeError as exc:
                raise BrokerError(
                    f"{self._conn.options.display}: unreadable heartbeat: {exc}"
                ) from exc
        if expired:
            await self._sweep(stream, expired)
        return sorted(live, key=lambda w: w.name)

    async def forget_worker(self, name: str) -> None:
        """Remove a worker's heartbeat."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        await self._conn.publish([(Names.key(self._names.workers, name), b"", headers)])
