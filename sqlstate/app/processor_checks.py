"""The processors of a run, loaded and checked as the daemon's start checks them.

One function, ``load_checked``, for every command that runs processors: ``sqlstate run`` (before
it opens its database), ``sqlstate check`` (which does nothing else), ``sqlstate replay`` and
``sqlstate.testing``. So a processor that ``check`` passes is one the daemon starts with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from sqlstate.changelog import mode as changelog_mode
from sqlstate.changelog.state_table import StateTable
from sqlstate.processors import registry
from sqlstate.processors.base import Processor
from sqlstate.processors.registry import Processors
from sqlstate.settings import Settings


def load_checked(
    settings: Settings, given: Sequence[Processor] = ()
) -> tuple[Processors, list[StateTable]]:
    """Every processor of ``settings`` (then ``given``, processors passed as objects), loaded
    and checked (their shape, names, migrations and forget statements against the guard), and,
    under ``--changelog``, the state tables whose rows its changelog ships (keyed, and by the
    partition). Raises ``ProcessorError`` (exit code 2) for the first problem; the caller
    closes the processors it gets."""
    processors = Processors.checked(registry.from_settings(settings, given))
    try:
        return processors, changelog_mode.checked_tables(settings, processors)
    except BaseException:
        processors.close()
        raise


def offline_settings(topics: Sequence[str], **options: Any) -> Settings:
    """The settings of a command that runs processors without Kafka (``check``, ``replay``,
    ``sqlstate.testing``), validated as a run's: ``options`` are ``Settings`` fields. Such a
    command joins no group; the group id it must have is never used."""
    return Settings(topics=tuple(topics), group_id=OFFLINE_GROUP, **options)


#: The group id of ``offline_settings``.
OFFLINE_GROUP = "sqlstate-offline"


def checked_lines(**options: Any) -> list[str]:
    """``sqlstate check``: ``load_checked`` on the processors of ``options`` (``Settings``
    fields); one line per processor that passed, and under ``--changelog`` one for the tables
    its changelog would ship. Raises as the daemon's start would, at the first problem."""
    # check decodes nothing: no format asks it for a schema registry.
    formats = {"key_format", "value_format"}
    settings = offline_settings(
        [OFFLINE_GROUP], **{name: value for name, value in options.items() if name not in formats}
    )
    processors, tables = load_checked(settings)
    with contextlib.closing(processors):
        sources = [
            *(
                "built-in" if spec in registry.BUILT_INS else spec
                for spec in settings.processor_specs
            ),
            *(f"--sql {path}" for path in settings.sql_files),
        ]
        lines = [
            f"ok {member.name}: {source}"
            for member, source in zip(processors.members, sources, strict=True)
        ]
    if settings.changelog:
        keys = "; ".join(f"{table.name} ({', '.join(table.key)})" for table in tables)
        lines.append(f"ok --changelog: rows shipped keyed by {keys}")
    return lines
