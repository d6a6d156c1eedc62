"""The ``sqlstate`` command (``commands.py``) and how it prints (``output.py``)."""

from sqlstate.cli.commands import main

__all__ = ["main"]
