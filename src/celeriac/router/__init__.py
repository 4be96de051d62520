"""The router: runs canvases and workflows from stored state (CEP "Router").

- :mod:`~celeriac.router.store`: the documents of a running workflow.
- :mod:`~celeriac.router.router`: :class:`Router`, which starts canvases and
  advances them as their steps settle, in whichever worker settles them.

See docs/canvas.md, "Running a canvas".
"""

from __future__ import annotations

from celeriac.router.router import Router, StepDone
from celeriac.router.store import WorkflowStore

__all__ = ["Router", "StepDone", "WorkflowStore"]
