-- Processor "order-totals": orders and amount per customer, per partition (so that one partition
-- can be forgotten on its own); the view sums the partitions. Recorded in schema_migrations as
-- order-totals/0001_order_totals. Never edit it once applied: add 0002_..., beside it.
CREATE TABLE order_totals (
    topic           TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    customer        TEXT    NOT NULL,
    orders          INTEGER NOT NULL,
    amount_cents    INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, customer)
) WITHOUT ROWID;

CREATE VIEW customer_totals (customer, orders, amount_cents) AS
    SELECT customer, sum(orders), sum(amount_cents) FROM order_totals GROUP BY customer;
