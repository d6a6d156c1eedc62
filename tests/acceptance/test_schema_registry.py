"""Values and keys in a schema registry's wire format (``--value-format avro|protobuf|
json-schema``), against the real broker and a real registry (Apicurio Registry's
Confluent-compatible API, started by tools/schema_registry): the records are framed here, the
schemas registered through the registry's API, and the state read from the SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, stored_positions, wait_for_positions
from tests.support.db import query
from tests.support.faults import ROOT, daemon, wait_for_log
from tests.support.kafka import Message, TopicFactory, produce
from tests.support.registry import ORDER, avro_record, encode_message_indexes, frame, register
from tests.support.workload import end_offsets
from tools.schema_registry import RegistryControl

SQL_EXAMPLE = str(ROOT / "examples" / "customer_totals.sql")

ORDER_V1 = ORDER
# The next version: a field added with a default, as schema evolution does.
ORDER_V2 = json.dumps(
    {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "customer", "type": "string"},
            {"name": "amount_cents", "type": "long"},
            {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
UNKNOWN_ID = 987_654


def registry_args(url: str, policy: str = "dead-letter") -> tuple[str, ...]:
    return ("--schema-registry-url", url, "--sql", SQL_EXAMPLE, "--on-bad-record", policy)


def customer_totals(database: Path) -> dict[str, int]:
    return dict(query(database, "SELECT customer, amount_cents FROM customer_amount"))


def rejected(database: Path) -> list[tuple[int, str]]:
    return query(database, 'SELECT "offset", error FROM rejected_records ORDER BY "offset"')


def orders(url: str, topic: str, first: int, count: int) -> tuple[int, int, list[Message]]:
    """Registers both versions; ``count`` orders framed alternately with each, 100 + 1 cents."""
    v1 = register(url, f"{topic}-value", ORDER_V1)
    v2 = register(url, f"{topic}-value", ORDER_V2)
    now_ms = int(time.time() * 1000)
    messages = []
    for number in range(first, first + count):
        customer = f"c-{number % 3}"
        if number % 2:
            value = avro_record(v1, ORDER_V1, {"customer": customer, "amount_cents": 100})
        else:
            datum = {"customer": customer, "amount_cents": 1, "placed_at": now_ms, "note": "x"}
            value = avro_record(v2, ORDER_V2, datum)
        messages.append(Message(customer.encode(), value, 0))
    return v1, v2, messages


async def test_avro_values_of_two_versions_reach_sql_and_bad_records_are_dead_lettered(
    tmp_path: Path,
    kafka_bootstrap: str,
    schema_registry_url: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=1)
    _, _, messages = await asyncio.to_thread(orders, schema_registry_url, topic, 0, 60)
    messages.insert(10, Message(b"c-0", frame(UNKNOWN_ID, b"\x02a\x02"), 0))
    messages.insert(20, Message(b"c-0", b'{"customer": "c-0", "amount_cents": 5}', 0))
    await produce(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    runner = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        "--value-format",
        "avro",
        *registry_args(schema_registry_url),
    ).start()
    try:
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [runner])
    finally:
        await runner.terminate()
    # 20 orders per customer, half of each version: 10 * 100 + 10 * 1.
    assert customer_totals(database) == {"c-0": 1010, "c-1": 1010, "c-2": 1010}
    reasons = rejected(database)
    assert [offset for offset, _ in reasons] == [10, 20]
    assert f"the schema registry has no schema {UNKNOWN_ID}" in reasons[0][1]
    assert "not framed by a schema registry" in reasons[1][1]
    # verify reads the topic with the same formats and registry, and finds the same state.
    verify = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "sqlstate", "verify", "--bootstrap-servers", kafka_bootstrap, "--topic", topic),
        *("--database", str(database), "--value-format", "avro"),
        *registry_args(schema_registry_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(verify.communicate(), 90)
    assert verify.returncode == 0, (out + err).decode()


PROTO_ORDER = """syntax = "proto3";
package shop;
message Order {
  string customer = 1;
  int64 amount_cents = 2;
}
"""
KEY_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"customer": {"type": "string"}},
        "required": ["customer"],
    }
)


def proto_order(customer: str, amount_cents: int) -> bytes:
    """An ``Order`` in Protobuf's encoding: field 1 a string, field 2 a varint."""
    name = customer.encode()
    varint = bytearray()
    while True:
        byte, amount_cents = amount_cents & 0x7F, amount_cents >> 7
        varint.append(byte | (0x80 if amount_cents else 0))
        if not amount_cents:
            break
    return b"\x0a" + bytes([len(name)]) + name + b"\x10" + bytes(varint)


async def test_protobuf_values_and_json_schema_keys(
    tmp_path: Path,
    kafka_bootstrap: str,
    schema_registry_url: str,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=1)
    value_id = await asyncio.to_thread(
        register, schema_registry_url, f"{topic}-value", PROTO_ORDER, "PROTOBUF"
    )
    key_id = await asyncio.to_thread(
        register, schema_registry_url, f"{topic}-key", KEY_SCHEMA, "JSON"
    )
    messages = [
        Message(
            frame(key_id, json.dumps({"customer": f"c-{n % 2}"}).encode()),
            frame(value_id, encode_message_indexes([0]) + proto_order(f"c-{n % 2}", 250)),
            0,
        )
        for n in range(10)
    ]
    # A key its JSON schema refuses: the record follows --on-bad-record.
    messages.append(Message(frame(key_id, b'{"customer": 7}'), messages[0].value, 0))
    await produce(kafka_bootstrap, topic, messages)
    database = tmp_path / "state.db"
    runner = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        *("--key-format", "json-schema", "--value-format", "protobuf"),
        *("--processor", "counts"),
        *registry_args(schema_registry_url),
    ).start()
    try:
        await wait_for_positions(database, await end_offsets(kafka_bootstrap, topic), 90, [runner])
    finally:
        await runner.terminate()
    assert customer_totals(database) == {"c-0": 1250, "c-1": 1250}
    counts = query(database, "SELECT key, count FROM counts ORDER BY key")
    assert counts == [('{"customer": "c-0"}', 5), ('{"customer": "c-1"}', 5)]
    reasons = rejected(database)
    assert [offset for offset, _ in reasons] == [10]
    assert "7 is not of type 'string'" in reasons[0][1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def healthz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as error:
        return str(error.read().decode())


@pytest.fixture
async def own_registry(tmp_path: Path) -> AsyncIterator[RegistryControl]:
    """A registry of this test's own, which it may stop and start (its schemas kept)."""
    control = RegistryControl(
        f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", tmp_path / "registry"
    )
    await asyncio.to_thread(control.up)
    try:
        yield control
    finally:
        await asyncio.to_thread(control.down)


@pytest.mark.timeout(420)
async def test_a_registry_that_does_not_answer_is_waited_for(
    tmp_path: Path,
    kafka_bootstrap: str,
    own_registry: RegistryControl,
    topic_factory: TopicFactory,
    group_id: str,
) -> None:
    topic = await topic_factory(partitions=1)
    url = own_registry.url
    v1, v2, _ = await asyncio.to_thread(orders, url, topic, 0, 0)
    first = [
        Message(b"a", avro_record(v1, ORDER_V1, {"customer": "c-0", "amount_cents": 100}), 0)
        for _ in range(10)
    ]
    await produce(kafka_bootstrap, topic, first)
    database = tmp_path / "state.db"
    port = free_port()
    runner: Daemon = daemon(
        kafka_bootstrap,
        topic,
        group_id,
        database,
        *("--value-format", "avro", "--metrics-port", str(port)),
        *registry_args(url, policy="fail"),
    ).start()
    try:
        await wait_for_positions(database, {(topic, 0): 10}, 90, [runner])
        await asyncio.to_thread(own_registry.stop)
        # Version 2 is not fetched yet: its records wait for the registry, uncommitted.
        datum = {"customer": "c-0", "amount_cents": 1, "placed_at": int(time.time() * 1000)}
        await produce(kafka_bootstrap, topic, [Message(b"a", avro_record(v2, ORDER_V2, datum), 0)])
        await wait_for_log(runner, "the schema registry does not answer", timeout=60)
        await asyncio.sleep(2)  # a tick of the monitor, and time for a wrong commit to show
        assert stored_positions(database) == {(topic, 0): 10}
        assert "degraded" in await asyncio.to_thread(healthz, port)
        assert runner.running()
        await asyncio.to_thread(own_registry.start)
        await wait_for_positions(database, {(topic, 0): 11}, 120, [runner])
        # Healthy again at the monitor's next tick.
        deadline = time.monotonic() + 10
        while "degraded" in await asyncio.to_thread(healthz, port):
            assert time.monotonic() < deadline, "still degraded with the registry back"
            await asyncio.sleep(0.2)
    finally:
        await runner.terminate()
    assert customer_totals(database) == {"c-0": 1001}
    assert rejected(database) == []
