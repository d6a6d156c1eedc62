-- Records a processor failed on (--on-processor-error dead-letter) join the records that did not
-- decode in rejected_records, with the name of the processor that failed. Only adds a column: a
-- database of the previous schema keeps its rows, whose processor is NULL.

-- NULL: the record did not decode (--on-bad-record dead-letter); otherwise the processor whose
-- Python code raised or whose statement failed on it, and error says how. Under --changelog the
-- rows reach the other hosts as every other rejected_records row does.
ALTER TABLE rejected_records ADD COLUMN processor TEXT;
