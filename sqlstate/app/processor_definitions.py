"""What each processor's state is made with, as one digest per processor (recorded in
``processor_definitions``): its ``definition`` (a ``--sql`` file's statements, a built-in's
name and parameters), the record formats that decode what it reads, the policies for records
that do not decode or that it fails on, and sqlstate's version. Two runs with the same digest
fold the same records into the same rows, so ``sqlstate rebuild`` may carry such a processor's
state over instead of folding every record again. A processor without a ``definition`` string
has no digest and is never carried; a Python processor that has one promises that the same text
means the same state (docs/processors.md)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from sqlstate.processors.base import Processor
from sqlstate.settings import Settings
from sqlstate.version import __version__


def definitions(processors: Sequence[Processor], settings: Settings) -> dict[str, str | None]:
    """Each processor's digest by name; None where it has no ``definition``."""
    return {processor.name: _digest(processor, settings) for processor in processors}


def _digest(processor: Processor, settings: Settings) -> str | None:
    definition: object = getattr(processor, "definition", None)
    if not isinstance(definition, str):
        return None
    # The formats decide what it reads; the two policies which records reach it and which
    # are set apart (``rejected_records`` is state too).
    made_of = [
        __version__,
        settings.key_format,
        settings.value_format,
        settings.on_bad_record,
        settings.on_processor_error,
        definition,
    ]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()
