"""celeriac on RabbitMQ, with the workloads of ``celeriac_redis.py`` (no peer runs here).

The broker is ``amqp://guest:guest@127.0.0.1:5672/`` in a namespace of the bench's
own, ``celeriac_bench`` (its quorum queues and streams, in the default vhost, are
deleted with ``AmqpBroker.drop_namespace()`` before and after every repetition:
RabbitMQ itself is not reconfigured). RabbitMQ keeps no results, so they go to the
Redis sink on celeriac's bench database (``redis://127.0.0.1:6379/8``, emptied
before every repetition), named to the worker by ``CELERIAC_SINKS``.
"""

from __future__ import annotations

import logging

from bench.systems import redis_common as rc
from bench.systems.celeriac_common import run_async
from bench.systems.celeriac_servers import SYSTEM, Server, scenarios

__all__ = ["DESCRIPTION", "SCENARIOS", "SERVER"]

NAMESPACE = "celeriac_bench"
URL = f"amqp://guest:guest@127.0.0.1:5672/?namespace={NAMESPACE}"
SINK = rc.redis_url(SYSTEM)


def _reset() -> None:
    """Delete the bench's namespace on RabbitMQ and empty the results' Redis database."""
    from celeriac.brokers.amqp import AmqpBroker

    async def drop() -> None:
        broker = AmqpBroker(URL)
        await broker.connect()
        try:
            await broker.drop_namespace()
        finally:
            await broker.close()

    # Deleting the namespace's streams cancels this broker's own readers of them, which
    # aiormq reports as a warning: expected here, not worth a line in the bench's output.
    channel_log = logging.getLogger("aiormq.channel")
    level = channel_log.level
    channel_log.setLevel(logging.ERROR)
    try:
        run_async(drop)
    finally:
        channel_log.setLevel(level)
    rc.flush(SYSTEM)


SERVER = Server(
    name="amqp",
    label="RabbitMQ",
    broker=URL,
    reset=_reset,
    backend=("celeriac.brokers.amqp", "celeriac.sinks.redis"),
    client="aio_pika",
    extra="amqp",
    sinks={"default": SINK},
    tidy=True,
)

DESCRIPTION = f"""\
- **On RabbitMQ** (`amqp-*`): `App("bench", "{URL}", sinks={{"default": "{SINK}"}})`:
  quorum queues in the namespace `{NAMESPACE}` of the default vhost, deleted before and
  after every run (`AmqpBroker.drop_namespace()`). RabbitMQ keeps no results, so they go
  to the Redis sink on celeriac's bench database (`FLUSHDB` before and after every run); the
  worker gets it as `CELERIAC_SINKS`. Worker, producer and workloads as on Redis; no
  peer runs on RabbitMQ, so these rows have no target.
"""

SCENARIOS = scenarios(SERVER)
