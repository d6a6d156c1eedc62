"""The order-totals processor tested as a user tests a processor of their own: records in, SQL
out, with ``sqlstate.testing`` (no broker, no daemon, a few milliseconds a test).

Run it with ``pytest examples/order_totals``; copy it beside your own processor and change the
records and the queries.
"""

from __future__ import annotations

import contextlib

from sqlstate.testing import RecordLike, run_processors

PROCESSOR = "examples.order_totals:OrderTotals"


def order(customer: str, cents: int) -> dict[str, object]:
    """A record of the orders topic: keyed by customer, its value a JSON order."""
    return {"key": customer, "value": {"json": {"customer": customer, "amount_cents": cents}}}


def test_orders_add_up_per_customer_across_partitions() -> None:
    records = [
        {**order("c-1", 250), "partition": 0},
        {**order("c-2", 100), "partition": 1},
        {**order("c-1", 50), "partition": 1},
    ]
    with contextlib.closing(run_processors([PROCESSOR], records, value_format="json")) as db:
        assert db.execute(
            "SELECT customer, orders, amount_cents FROM customer_totals ORDER BY customer"
        ).fetchall() == [("c-1", 2, 300), ("c-2", 1, 100)]


def test_what_is_not_an_order_is_left_out() -> None:
    records: list[RecordLike] = [
        order("c-1", 250),
        ("c-1", None),  # a tombstone
        ("c-1", {"json": [1, 2]}),  # JSON, but not an order
        ("c-1", {"json": {"customer": "c-1", "amount_cents": 1.5}}),  # not in cents
        ("c-1", {"hex": "fffe"}),  # not JSON at all: --on-bad-record decides
    ]
    with contextlib.closing(
        run_processors([PROCESSOR], records, value_format="json", on_bad_record="dead-letter")
    ) as db:
        assert db.execute("SELECT orders, amount_cents FROM customer_totals").fetchall() == [
            (1, 250)
        ]
        assert db.execute("SELECT offset FROM rejected_records").fetchall() == [(4,)]


def test_batch_boundaries_do_not_change_the_totals() -> None:
    records = [order(f"c-{n % 3}", n) for n in range(20)]
    query = "SELECT customer, orders, amount_cents FROM customer_totals ORDER BY customer"
    results = []
    for batch_size in (1, 7, 20):
        with contextlib.closing(
            run_processors([PROCESSOR], records, value_format="json", batch_size=batch_size)
        ) as db:
            results.append(db.execute(query).fetchall())
    assert len(results[0]) == 3
    assert results[0] == results[1] == results[2]
