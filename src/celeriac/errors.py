"""Every error celeriac raises, under one root.

::

    CeleriacError
    ├── ConfigurationError        bad URL, bad option, unknown scheme
    ├── ProtocolError             a message that cannot be accepted
    │   ├── DecodeError           not a valid envelope (bytes, JSON, fields)
    │   ├── SignatureError        unsigned or wrongly signed where a key is configured
    │   └── VersionError          a protocol version this build does not speak
    ├── BrokerError               a backend failed; the original is the __cause__
    ├── UnknownTask               no task of that name is registered here
    ├── TaskError                 a task failed remotely and its error could not be rebuilt
    ├── PoisonMessage             a message kept killing its workers; now a dead letter
    ├── TaskRevoked               the task was revoked (or expired) before it finished
    ├── TimeLimitExceeded         a task ran past its (soft) time limit
    ├── ResultTimeout             Result.get(timeout=...) ran out (also a TimeoutError)
    └── ActorError                the actor core (see celeriac.actors)
        ├── ActorNotRunning       tell/ask to an actor that is not started
        ├── MailboxFull           try_tell on a full mailbox
        ├── AskTimeout            no reply within the ask's timeout (also a TimeoutError)
        ├── ActorTimeout          an actor did not reach a state in time (also a TimeoutError)
        └── BootError             a mandatory boot step failed; start-up stopped

Third-party errors are translated at the backend boundary; cancellation is never
wrapped.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorNotRunning",
    "ActorTimeout",
    "AskTimeout",
    "BootError",
    "BrokerError",
    "CeleriacError",
    "ConfigurationError",
    "DecodeError",
    "MailboxFull",
    "PoisonMessage",
    "ProtocolError",
    "ResultTimeout",
    "SignatureError",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "UnknownTask",
    "VersionError",
]


class CeleriacError(Exception):
    """The root of every error celeriac raises."""


class ConfigurationError(CeleriacError):
    """A setting, URL or option is wrong."""


class ProtocolError(CeleriacError):
    """A message cannot be accepted."""


class DecodeError(ProtocolError):
    """The bytes are not a valid envelope."""


class SignatureError(ProtocolError):
    """The message is unsigned or wrongly signed while a signing key is configured."""


class VersionError(ProtocolError):
    """The message's protocol version is not one this build speaks."""


class BrokerError(CeleriacError):
    """A broker or sink backend failed; the backend's own error is the ``__cause__``."""


class UnknownTask(CeleriacError):
    """No task with this name is registered."""


class TaskError(CeleriacError):
    """A task failed remotely with an error that could not be rebuilt locally.

    ``type_name`` is the remote exception's qualified type name, ``message`` its
    text and ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class PoisonMessage(CeleriacError):
    """The task's message was delivered more often than the bound without being settled
    (its runs kept killing or losing their worker); it waits in the dead letters."""


class TimeLimitExceeded(CeleriacError):
    """A task ran past its time limit and was stopped (or, past a soft limit, told to stop)."""


class TaskRevoked(CeleriacError):
    """The task was revoked or expired before it finished."""


class ResultTimeout(CeleriacError, TimeoutError):
    """No result arrived within the timeout."""


class ActorError(CeleriacError):
    """An error of the actor core."""


class ActorNotRunning(ActorError):
    """The actor is not running: it cannot take messages."""


class MailboxFull(ActorError):
    """The actor's mailbox is full (raised by ``try_tell`` only; ``tell`` waits)."""


class AskTimeout(ActorError, TimeoutError):
    """The actor did not reply within the ask's timeout."""


class ActorTimeout(ActorError, TimeoutError):
    """An actor did not reach the awaited state within the timeout."""


class BootError(ActorError):
    """A mandatory boot step failed, so start-up was stopped."""
