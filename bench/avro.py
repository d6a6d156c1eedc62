"""Run (g'): the SQL processor on Avro values framed by a schema registry, against (g), the same
on JSON values. The same orders as the workload's JSON ones, into a topic of their own, each
value the Avro encoding of its JSON order (``ORDER``) framed for the registered schema's id."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import fastavro

from bench import workload
from sqlstate.kafka.formats.wire import frame
from tools.schema_registry import register

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "customer", "type": "string"},
        {"name": "amount_cents", "type": "long"},
        {"name": "sequence", "type": "long"},
        {"name": "pad", "type": "string"},
    ],
}


def encoder(registry_url: str, topic: str) -> Callable[[bytes, int], bytes]:
    """The value of each order, after registering ``ORDER`` for ``topic``'s values."""
    schema_id = register(registry_url, f"{topic}-value", json.dumps(ORDER))
    parsed = fastavro.parse_schema(ORDER)

    def value_of(name: bytes, sequence: int) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, json.loads(workload.order_value(name, sequence)))
        return frame(schema_id, out.getvalue())

    return value_of


async def produce(
    bootstrap: str, registry_url: str, topic: str, spec: workload.Workload
) -> workload.Produced:
    """Create ``topic`` and produce the workload's orders into it as Avro."""
    await workload.create_topic(bootstrap, topic, spec.partitions)
    return await workload.produce(bootstrap, topic, spec, encoder(registry_url, topic))
