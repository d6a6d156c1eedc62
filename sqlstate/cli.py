"""The ``sqlstate`` command line (placeholder until the daemon lands)."""

import click

from sqlstate import __version__


@click.group()
@click.version_option(__version__, prog_name="sqlstate")
def main() -> None:
    """Consume Kafka topics into SQLite state, exactly once."""
