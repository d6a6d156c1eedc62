"""Allow ``python -m sqlstate``."""

from sqlstate.cli import main

main()
