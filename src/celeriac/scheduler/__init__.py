"""The scheduler (CEP "Scheduler"): concurrency and rate limits, periodic tasks.

``limits`` holds what a task declares (``Limit``, ``RateLimit``); the worker's side of
limits is :mod:`celeriac.worker.gate`. ``periodic`` holds what a periodic task declares
and the arithmetic of its ticks; ``runner`` the ``PeriodicScheduler`` that publishes them.
"""
