"""The errors of canvases and workflows, under :class:`celeriac.errors.CeleriacError`.

::

    CeleriacError
    └── CanvasError               a canvas or workflow went wrong
        ├── InvalidCanvas         a canvas cannot be built as given (also a ValueError)
        │   └── InvalidWorkflow   a workflow failed validation (also a ValueError)
        └── GroupFailed           members of a group failed; which ones is in ``failure``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from celeriac.errors import CeleriacError

if TYPE_CHECKING:
    from celeriac.canvas.outcomes import GroupFailure

__all__ = ["CanvasError", "GroupFailed", "InvalidCanvas", "InvalidWorkflow"]


class CanvasError(CeleriacError):
    """A canvas or workflow went wrong."""


class InvalidCanvas(CanvasError, ValueError):
    """A canvas cannot be built as given: bad options, a bad chunk size, a bad callback."""


class InvalidWorkflow(InvalidCanvas):
    """A workflow failed validation: duplicate or missing steps, a cycle, unknown tasks,
    unknown or missing parameters. The message names every problem found."""


class GroupFailed(CanvasError):
    """Members of a group (or map, starmap, chunks, chord header) failed.

    ``failure`` is the :class:`~celeriac.canvas.outcomes.GroupFailure`: the group's
    size and, in member order, each failed member's index and failure.
    """

    def __init__(self, failure: GroupFailure | dict[str, object]) -> None:
        if not hasattr(failure, "failures"):  # rebuilt from a result document
            from celeriac.canvas.outcomes import GroupFailure

            failure = msgspec.convert(failure, GroupFailure)
        assert not isinstance(failure, dict)
        indices = [member.index for member in failure.failures]
        super().__init__(f"{len(indices)} of {failure.size} members failed: {indices}")
        self.failure = failure
