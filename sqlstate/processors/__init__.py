"""State processors: each turns records into statements that run in the batch's transaction.

The public API, for processors of your own (see ``base.py`` and README.md, "Your own state"):

    from sqlstate.processors import Migration, Processor, Record, Records, Statement
"""

from sqlstate.processors.base import Migration, Processor, Record, Records, Statement

__all__ = ["Migration", "Processor", "Record", "Records", "Statement"]
