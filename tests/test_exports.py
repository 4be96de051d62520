"""The public surface is exactly what docs/api.md documents."""

from __future__ import annotations

import celeriac
import celeriac.abc
import celeriac.actors


def test_all_is_sorted_and_importable() -> None:
    for module in (celeriac, celeriac.abc, celeriac.actors):
        assert list(module.__all__) == sorted(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_top_level_names() -> None:
    assert set(celeriac.__all__) == {
        "App",
        "Budget",
        "CeleriacError",
        "CircuitBreaker",
        "ConfigurationError",
        "Envelope",
        "GroupFailed",
        "HealthState",
        "Limit",
        "PoisonMessage",
        "RateLimit",
        "Result",
        "ResultTimeout",
        "Retry",
        "Signature",
        "Task",
        "TaskError",
        "TaskRevoked",
        "TimeLimitExceeded",
        "UnknownTask",
        "Worker",
        "chain",
        "chord",
        "group",
        "optional",
        "poisonous",
        "retry",
    }


def test_every_public_name_has_a_docstring() -> None:
    for module in (celeriac, celeriac.abc, celeriac.actors):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
