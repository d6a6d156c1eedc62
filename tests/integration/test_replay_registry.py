"""``sqlstate replay`` of Avro values against the real schema registry: framed bytes in the
records file decode as the daemon decodes them, each batch waiting for the schemas it needs; an
unknown schema id and an unframed value are bad records, as in a run."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from click.testing import CliRunner

from sqlstate.cli.commands import main
from tests.support.db import query
from tests.support.registry import ORDER, avro_record, frame, register
from tests.support.replaying import ROOT, write_lines

UNKNOWN_ID = 987_654


def test_avro_values_replay_through_the_registry(tmp_path: Path, schema_registry_url: str) -> None:
    schema_id = register(schema_registry_url, f"replay-{uuid.uuid4().hex[:8]}-value", ORDER)
    values = [
        avro_record(schema_id, ORDER, {"customer": f"c-{n % 2}", "amount_cents": 100})
        for n in range(8)
    ]
    values.insert(3, frame(UNKNOWN_ID, b"\x02a\x02"))
    values.insert(6, b'{"customer": "c-0", "amount_cents": 5}')
    lines = [
        {"topic": "orders", "key": "k", "value": {"base64": base64.b64encode(v).decode()}}
        for v in values
    ]
    database = tmp_path / "state.db"
    result = CliRunner().invoke(
        main,
        [
            *("-q", "replay", "--records", str(write_lines(tmp_path / "r.jsonl", lines))),
            *("--database", str(database), "--batch-size", "4", "--value-format", "avro"),
            *("--schema-registry-url", schema_registry_url, "--on-bad-record", "dead-letter"),
            *("--sql", str(ROOT / "examples" / "customer_totals.sql")),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "replayed 8 record(s) in 3 batch(es)" in result.output
    totals = query(database, "SELECT customer, amount_cents FROM customer_amount ORDER BY 1")
    assert totals == [("c-0", 400), ("c-1", 400)]
    reasons = query(database, 'SELECT "offset", error FROM rejected_records ORDER BY 1')
    assert [offset for offset, _ in reasons] == [3, 6]
    assert f"the schema registry has no schema {UNKNOWN_ID}" in reasons[0][1]
    assert "not framed by a schema registry" in reasons[1][1]
