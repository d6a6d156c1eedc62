-- The order-totals processor's statements, by name: "-- name: <name>" starts each, and
-- Queries(package) in __init__.py reads them. Its tables are made by migrations/ beside this file.

-- name: add_orders
-- One row per customer of a partition's batch (the batch is added up first), added to the totals.
INSERT INTO order_totals (topic, partition, customer, orders, amount_cents)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (topic, partition, customer) DO UPDATE
    SET orders = orders + excluded.orders, amount_cents = amount_cents + excluded.amount_cents;

-- name: forget_partition
DELETE FROM order_totals WHERE topic = ? AND partition = ?;
