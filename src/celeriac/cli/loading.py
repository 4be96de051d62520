"""Finding the user's App from ``module:attribute`` (as uvicorn does)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from celeriac.app import App

__all__ = ["AppParam", "load_app"]


def load_app(spec: str) -> App:
    """Import ``module:attr`` (or ``module``, finding its one App) and return the App."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py"):
        module_name = module_name[:-3].replace(os.sep, ".").lstrip(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise click.BadParameter(f"cannot import module {module_name!r}: {exc}") from exc
        raise
    if attr:
        obj: object = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise click.BadParameter(
                    f"module {module_name!r} has no attribute {attr!r}"
                ) from None
        if not isinstance(obj, App):
            raise click.BadParameter(f"{spec} is a {type(obj).__name__}, not a celeriac App")
        return obj
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) != 1:
        found = "no App" if not apps else f"{len(apps)} Apps"
        raise click.BadParameter(
            f"module {module_name!r} has {found}; name one as {module_name}:app"
        )
    return apps[0]


class AppParam(click.ParamType):  # type: ignore[type-arg]
    """A click parameter that loads an App; falls back to $CELERIAC_APP."""

    name = "app"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> App:
        if isinstance(value, App):
            return value
        try:
            return load_app(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
