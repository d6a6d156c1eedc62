-- A processor in SQL alone: the amount per customer, from JSON order events such as
-- {"customer": "c-17", "amount_cents": 1250}.
--
--   sqlstate run --topic orders --group-id customer-totals --database orders.db \
--       --sql examples/customer_totals.sql --value-format json
--
-- The processor's name is the file's: customer_totals.

-- sqlstate: schema
-- Per partition, so that one partition's share can be forgotten on its own; the view sums them.
CREATE TABLE customer_amounts (
    topic           TEXT    NOT NULL,
    partition       INTEGER NOT NULL,
    customer        TEXT    NOT NULL,
    amount_cents    INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, customer)
) WITHOUT ROWID;

CREATE VIEW customer_amount (customer, amount_cents) AS
    SELECT customer, sum(amount_cents) FROM customer_amounts GROUP BY customer;

-- sqlstate: record
-- Once per record. A value that is JSON but not an order (no customer, or an amount that is
-- not an integer) adds nothing: the WHERE leaves it out, the same way on every replay.
INSERT INTO customer_amounts (topic, partition, customer, amount_cents)
SELECT :topic, :partition, json_extract(:value, '$.customer'),
       json_extract(:value, '$.amount_cents')
WHERE json_type(:value, '$.customer') = 'text'
  AND json_type(:value, '$.amount_cents') = 'integer'
ON CONFLICT (topic, partition, customer) DO UPDATE
    SET amount_cents = amount_cents + excluded.amount_cents;

-- sqlstate: forget
DELETE FROM customer_amounts WHERE topic = :topic AND partition = :partition;
