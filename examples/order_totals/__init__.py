"""A processor of your own: orders and amount per customer, from JSON order events.

Run it (from the repository's root, which ``--processor`` searches first for the package):

    sqlstate run --topic orders --group-id order-totals --database orders.db \\
        --processor examples.order_totals:OrderTotals --value-format json

Each record's value is an order such as ``{"customer": "c-17", "amount_cents": 1250}``; with
``--value-format json`` sqlstate has already checked that it is JSON, and hands it over as text.
The processor keeps the state per partition (so that one partition can be forgotten on its own)
and a view sums the partitions. Amounts are integers (cents): adding floating-point numbers in
another order gives another rounding, and the order of additions depends on where batches
begin and end, so the totals would not be exact.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from sqlstate.processors import Migration, Queries, Records, Statement, bundled

# The package is the whole processor, as each built-in is (sqlstate/processors/latest/): this
# code, its statements by name (queries.sql) and its tables (migrations/NNNN_what.sql), all
# beside this file. Copy the folder and rename it to start your own.
sql = Queries(__name__)


class OrderTotals:
    """Orders and amount per customer."""

    name = "order-totals"
    migrations: Sequence[Migration] = bundled(__name__)
    # Under --changelog each changed row is shipped under its key: the table's PRIMARY KEY.
    changelog_tables: Mapping[str, Sequence[str]] = {
        "order_totals": ("topic", "partition", "customer")
    }

    def statements(self, tp: TopicPartition, records: Records) -> Sequence[Statement]:
        # Add up the batch first: the database then sees one row per customer, not per order.
        totals: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        for record in records:
            if record.value is None:
                continue  # a tombstone: no order
            order = json.loads(record.value)
            if not isinstance(order, dict):
                continue  # JSON, but not an order: nothing to add (the same on every replay)
            customer, amount = order.get("customer"), order.get("amount_cents")
            if not isinstance(customer, str) or type(amount) is not int:
                continue
            total = totals[customer]
            total[0] += 1
            total[1] += amount
        rows = [
            (tp.topic, tp.partition, customer, orders, amount)
            for customer, (orders, amount) in totals.items()
        ]
        return [Statement(sql("add_orders"), rows)] if rows else []

    def forget(self, tp: TopicPartition) -> Sequence[Statement]:
        return [Statement(sql("forget_partition"), [(tp.topic, tp.partition)])]
