"""``python -m celeriac`` is the ``celeriac`` command."""

from celeriac.cli import main

main()
