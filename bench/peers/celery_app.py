"""Celery on Redis (broker and result backend): ``python -m celery -A bench.peers.celery_app``.

Tuned for throughput, as a user after speed would: JSON (the default), no task events,
no remote control (so no pidbox fan-out queue), results kept for an hour, a large
prefetch (``BENCH_CELERY_PREFETCH``, per pool slot) so the worker is never starved.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.systems.redis_common import redis_url

URL = redis_url("celery")
QUEUE = "bench"

app = Celery("bench_celery", broker=URL, backend=URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    task_acks_late=False,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "100")),
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Returns at once."""


@app.task(name="bench.sleep")
def sleep(seconds: float) -> None:
    """Waits without using the CPU (cooperative under gevent, releases the GIL in threads)."""
    time.sleep(seconds)
