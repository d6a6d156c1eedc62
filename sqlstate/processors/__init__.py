"""State processors: each turns records into statements that run in the batch's transaction.

The public API, for processors of your own (see ``base.py`` and README.md, "Your own state"):

    from sqlstate.processors import Migration, Processor, Record, Records, Statement

and, for a processor kept as a package the way the built-ins are (its code, a ``queries.sql`` of
named statements and a ``migrations/`` folder side by side; ``examples/order_totals/``):

    from sqlstate.processors import Queries, bundled

    sql = Queries(__name__)  # sql("name"): the statement so named in the package's queries.sql
    migrations = bundled(__name__)  # the package's migrations/NNNN_what.sql, in order
"""

from sqlstate.processors.base import Migration, Processor, Record, Records, Statement
from sqlstate.state.migrate import bundled
from sqlstate.state.queries import Queries

__all__ = ["Migration", "Processor", "Queries", "Record", "Records", "Statement", "bundled"]
