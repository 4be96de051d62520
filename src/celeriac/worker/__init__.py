"""The worker: consumer, executors per task kind, result publisher, housekeeping."""

from __future__ import annotations

from celeriac.worker.budget import Budget, BudgetStrategy
from celeriac.worker.worker import Worker

__all__ = ["Budget", "BudgetStrategy", "Worker"]
