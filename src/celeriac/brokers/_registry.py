"""The scheme registry: one table from URL scheme to backend, for brokers and sinks.

Built-in backends are listed here by module and class and imported only when a
URL asks for them, so the core install does not need the clients of the server
backends. Third-party backends register through entry points (group
``celeriac.brokers`` or ``celeriac.sinks``; the entry point's name is the scheme
and it loads a callable ``(url: str, hub: Hub) -> backend``, usually the class).
A built-in scheme cannot be taken over by an entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Generic, NamedTuple, TypeVar, cast

from celeriac.brokers._hub import Hub
from celeriac.brokers._url import scheme_of
from celeriac.errors import ConfigurationError

__all__ = ["Builtin", "SchemeRegistry"]

T = TypeVar("T")


class Builtin(NamedTuple):
    """Where a built-in backend lives, and the install extra its client comes with."""

    module: str
    attribute: str
    extra: str | None = None


class SchemeRegistry(Generic[T]):
    """Resolves a URL to a backend factory: built-ins first, then entry points."""

    def __init__(self, kind: str, group: str, builtin: Mapping[str, Builtin]) -> None:
        self.kind = kind
        self.group = group
        self._builtin = dict(builtin)

    def schemes(self) -> list[str]:
        """Every scheme known here: built-in and installed third-party ones."""
        found = set(self._builtin)
        found.update(ep.name for ep in entry_points(group=self.group))
        return sorted(found)

    def factory(self, scheme: str) -> Callable[[str, Hub], T]:
        """The callable that makes a backend for ``scheme``."""
        builtin = self._builtin.get(scheme)
        if builtin is not None:
            return self._load_builtin(scheme, builtin)
        for ep in entry_points(group=self.group, name=scheme):
            try:
                return cast(Callable[[str, Hub], T], ep.load())
            except Exception as exc:
                raise ConfigurationError(
                    f"the {self.kind} backend for {scheme}:// ({ep.value}) failed to load: {exc}"
                ) from exc
        known = ", ".join(f"{s}://" for s in self.schemes())
        raise ConfigurationError(f"no {self.kind} backend for {scheme}:// (known: {known})")

    def open(self, url: str, hub: Hub) -> T:
        """A new, not yet connected backend for ``url``."""
        return self.factory(scheme_of(url))(url, hub)

    def _load_builtin(self, scheme: str, builtin: Builtin) -> Callable[[str, Hub], T]:
        try:
            module = importlib.import_module(builtin.module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == builtin.module or builtin.module.startswith(exc.name)):
                raise ConfigurationError(
                    f"the {self.kind} backend for {scheme}:// is not available in this version"
                ) from exc
            hint = f" (pip install 'celeriac[{builtin.extra}]')" if builtin.extra else ""
            raise ConfigurationError(
                f"the {self.kind} backend for {scheme}:// needs {exc.name!r}{hint}"
            ) from exc
        return cast(Callable[[str, Hub], T], getattr(module, builtin.attribute))
