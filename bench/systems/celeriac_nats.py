"""celeriac on NATS JetStream, with the workloads of ``celeriac_redis.py`` (no peer runs here).

The broker is ``nats://127.0.0.1:4222`` in a namespace of the bench's own,
``celeriac_bench``: its streams and key-value buckets (results included, in the
bucket ``celeriac_bench_results`` beside the broker) are deleted before and after
every repetition.
"""

from __future__ import annotations

from bench.systems.celeriac_common import run_async
from bench.systems.celeriac_servers import Server, scenarios

__all__ = ["DESCRIPTION", "SCENARIOS", "SERVER"]

SERVER_URL = "nats://127.0.0.1:4222"
NAMESPACE = "celeriac_bench"
URL = f"{SERVER_URL}/?namespace={NAMESPACE}"


def _reset() -> None:
    """Delete the namespace's streams and key-value buckets (as the broker names them)."""
    import nats
    from nats.js.errors import NotFoundError

    from celeriac.brokers._nats import Names

    names = Names(NAMESPACE)
    streams = [names.tasks, names.delayed, names.dead]
    streams += [f"KV_{bucket}" for bucket in (names.revoked, names.workers, names.results)]

    async def drop() -> None:
        client = await nats.connect(SERVER_URL, connect_timeout=5, allow_reconnect=False)
        try:
            js = client.jetstream()
            for stream in streams:
                try:
                    await js.delete_stream(stream)
                except NotFoundError:
                    pass
        finally:
            await client.close()

    run_async(drop)


SERVER = Server(
    name="nats",
    label="NATS",
    broker=URL,
    reset=_reset,
    backend=("celeriac.brokers.nats", "celeriac.sinks.nats"),
    client="nats",
    extra="nats",
    tidy=True,
)

DESCRIPTION = f"""\
- **On NATS JetStream** (`nats-*`): `App("bench", "{URL}")`: the streams
  `{NAMESPACE}_tasks`, `_delayed`, `_dead` and the key-value buckets `_revoked`,
  `_workers`, `_results` (file storage), deleted before and after every run. Results
  go to the NATS sink beside the broker (bucket `{NAMESPACE}_results`). Worker,
  producer and workloads as on Redis; no peer runs on NATS, so these rows have no target.
"""

SCENARIOS = scenarios(SERVER)
