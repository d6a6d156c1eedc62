"""Allow ``python -m sqlstate``."""

from sqlstate.cli.commands import main

main()
