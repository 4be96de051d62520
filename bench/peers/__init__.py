"""The peers' task modules, one per system, which their worker subprocesses load.

Each defines a no-op task and a task that sleeps (the I/O-bound workload), both
returning ``None``, like bench/apps.py does for celeriac. Settings the producer
and the worker must agree on (the Redis URL, pool sizes) come from environment
variables set by the system's module in bench/systems/.
"""
