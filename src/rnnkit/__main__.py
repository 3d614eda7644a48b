"""``python -m rnnkit``: the same as the ``rnnkit`` command."""

from .cli import run

run()
