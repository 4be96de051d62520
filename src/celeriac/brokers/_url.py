"""Backend URLs: scheme, location and query-string options.

Every backend is configured by its URL alone; options travel in the query string
(``sqlite:///x.db?visibility_timeout=2``). :class:`BackendURL` parses the URL once
and checks the options strictly: an option the backend does not read is a
:class:`~celeriac.errors.ConfigurationError` (a typo must not be silently ignored).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from celeriac.errors import ConfigurationError

__all__ = ["BackendURL", "redact", "scheme_of"]


def scheme_of(url: str) -> str:
    """The lowercase scheme of ``url`` (``"sqlite"`` for ``"sqlite:///x.db"``)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ConfigurationError(f"not a backend URL (expected scheme://...): {url!r}")
    return scheme.lower()


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    if not password:
        return url
    scheme, _, rest = url.partition("://")
    location, slash, path = rest.partition("/")
    user, _, host = location.rpartition("@")
    name = user.partition(":")[0]
    return f"{scheme}://{name}:***@{host}{slash}{path}"


class BackendURL:
    """A parsed backend URL whose options are read, typed, once each.

    Read options with :meth:`text`, :meth:`number`, :meth:`integer` and :meth:`choice`,
    then call :meth:`finish`, which rejects any option nobody read.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.scheme = scheme_of(url)
        try:
            parts = urlsplit(url)
            self.port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid backend URL {url!r}: {exc}") from exc
        #: host name, or "" when absent (``memory://`` or ``sqlite:///x.db``)
        self.host = unquote(parts.hostname or "")
        #: the raw ``netloc`` (for memory://NAME, the store's name)
        self.netloc = unquote(parts.netloc)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.path = unquote(parts.path)
        self._options: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in self._options:
                raise ConfigurationError(f"option {key!r} given twice in {url!r}")
            self._options[key] = value
        self._read: set[str] = set()

    def file_path(self) -> str:
        """The database file named by a ``sqlite:///...`` style URL, made absolute.

        SQLAlchemy's convention: ``sqlite:///rel.db`` is relative to the current
        directory, ``sqlite:////abs/path.db`` is absolute.
        """
        if self.netloc:
            raise ConfigurationError(
                f"{self.url!r}: a file URL has no host; use {self.scheme}:///relative.db "
                f"or {self.scheme}:////absolute/path.db"
            )
        path = self.path[1:] if self.path.startswith("/") else self.path
        if not path or path == ":memory:":
            raise ConfigurationError(
                f"{self.url!r}: name a database file (for a store in memory, use memory://)"
            )
        return os.path.abspath(path)

    def _take(self, name: str) -> str | None:
        self._read.add(name)
        return self._options.get(name)

    def text(self, name: str, default: str) -> str:
        """Option ``name`` as text, or ``default``."""
        value = self._take(name)
        return default if value is None else value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """Option ``name`` as a number of at least ``minimum``, or ``default``."""
        value = self._take(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigurationError(f"{self.url!r}: option {name} must be a number") from None
        if not number >= minimum:  # also rejects nan
            raise ConfigurationError(f"{self.url!r}: option {name} must be >= {minimum}")
        return number

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        """Option ``name`` as an integer of at least ``minimum``, or ``default``."""
        value = self._take(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigurationError(f"{self.url!r}: option {name} must be an integer") from None
        if number < minimum:
            raise ConfigurationError(f"{self.url!r}: option {name} must be >= {minimum}")
        return number

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """Option ``name``, one of ``choices`` (case-insensitive), or ``default``."""
        value = self._take(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise ConfigurationError(
                f"{self.url!r}: option {name} must be one of {', '.join(choices)}"
            )
        return value.lower()

    def ignore(self, *names: str) -> None:
        """Accept these options without using them (a sink given its broker's URL)."""
        self._read.update(names)

    def finish(self) -> None:
        """Reject options that were given but never read."""
        unknown = sorted(set(self._options) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigurationError(
                f"{self.url!r}: unknown option(s) {', '.join(unknown)}"
                f" for {self.scheme}:// (known: {known})"
            )
