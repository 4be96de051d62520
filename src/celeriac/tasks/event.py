"""Event messages (CEP "Event messages"): one message, any number of subscribers.

``@app.event`` turns a class with annotated fields into an :class:`EventType`:

.. code-block:: python

    @app.event
    class UserRegistered:
        user_id: int
        email: str

    UserRegistered.subscribe(send_welcome_email)
    UserRegistered.delay(user_id=1, email="a@b.c")

``delay`` validates the fields against the class *before* anything is published
(a wrong type or a missing field raises :class:`TypeError` and sends nothing), then
publishes one event message. The router (in whichever worker receives it) turns it
into one command per subscriber, each with the event's fields as keyword
arguments (see :mod:`celeriac.router.events`). Subscribers are recorded in the
app's store, so a worker that only knows the event by name
(``app.subscribe("users.UserRegistered", task)``) receives it too.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, get_type_hints

import msgspec

from celeriac.messages import Envelope, new_id

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.tasks.result import Result
    from celeriac.tasks.task import Task

__all__ = ["EventType", "event_struct"]


class EventType:
    """A declared event: validates, publishes, and takes subscribers."""

    def __init__(self, app: App, name: str, cls: type, queue: str = "default") -> None:
        self.app = app
        self.name = name
        self.cls = cls
        self.queue = queue
        self.struct = event_struct(name, cls)
        self.__doc__ = cls.__doc__

    def __repr__(self) -> str:
        return f"<EventType {self.name}>"

    def __call__(self, **fields: Any) -> Any:
        """A validated instance of the event (the class's fields, checked)."""
        return self.validate(fields)

    def validate(self, fields: dict[str, Any]) -> Any:
        """``fields`` checked against the class; :class:`TypeError` names what is wrong."""
        try:
            return msgspec.convert(fields, self.struct)
        except msgspec.ValidationError as exc:
            raise TypeError(f"event {self.name}: {exc}") from exc

    def subscribe(self, task: Task[..., Any] | str) -> Task[..., Any] | str:
        """Run ``task`` (keyword arguments: the event's fields) once for each event."""
        self.app.subscribe(self.name, task)
        return task

    def message(self, **fields: Any) -> Envelope:
        """The event message for these fields (validated), not yet published."""
        instance = self.validate(fields)
        return Envelope(
            id=new_id(),
            name=self.name,
            kind="event",
            kwargs=msgspec.to_builtins(instance),
            queue=self.queue,
            ignore_result=True,
        )

    def delay(self, **fields: Any) -> Result[Any]:
        """Publish one event with these fields; every subscriber runs once.

        The :class:`~celeriac.tasks.result.Result` says when the broker has the
        message (``confirmed()``); an event has no value of its own.
        """
        return self.app.publish(self.message(**fields))


def event_struct(name: str, cls: type) -> type[msgspec.Struct]:
    """A msgspec Struct type with the fields of ``cls`` (a Struct, dataclass, or a plain
    class with annotations), for validating events of ``name``."""
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        return cls
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    if dataclasses.is_dataclass(cls):
        for field in dataclasses.fields(cls):
            hint = get_type_hints(cls).get(field.name, Any)
            if field.default is not dataclasses.MISSING:
                fields.append((field.name, hint, field.default))
            else:
                fields.append((field.name, hint))
    else:
        for field_name, hint in get_type_hints(cls).items():
            if field_name.startswith("_"):
                continue
            default = cls.__dict__.get(field_name, msgspec.NODEFAULT)
            fields.append(
                (field_name, hint) if default is msgspec.NODEFAULT else (field_name, hint, default)
            )
    if not fields:
        raise TypeError(f"event {name}: {cls.__name__} declares no fields (annotate them)")
    required = [f for f in fields if len(f) == 2]
    optional = [f for f in fields if len(f) == 3]
    return msgspec.defstruct(cls.__name__, [*required, *optional], forbid_unknown_fields=True)
