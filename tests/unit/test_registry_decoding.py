"""The deserializers of the registry's formats: a framed value decodes with a compiled schema,
an unframed one is undecodable, an unfetched schema leaves the value pending; and a registry
that does not answer keeps the batch waiting, reported, until stopped (or, for a one-shot
command, until its time is up)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aiokafka.structs import ConsumerRecord

from sqlstate.errors import SchemaRegistryError
from sqlstate.kafka.decoding import Decoding, Undecodable
from sqlstate.kafka.formats import compile_decoder
from sqlstate.kafka.formats.wire import frame
from sqlstate.kafka.registry import RegistryClient
from sqlstate.kafka.schemas import Pending, Schemas
from sqlstate.observe.stats import Stats

SCHEMA = json.dumps({"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]})


def nowhere() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def record(value: object) -> ConsumerRecord[object, object]:
    return ConsumerRecord("t", 0, 0, 0, 0, None, value, None, 0, 0, ())


async def test_framed_unframed_and_pending_values() -> None:
    stats = Stats()
    schemas = Schemas(RegistryClient(nowhere()), stats)
    schemas.decoders[("avro", 7)] = compile_decoder("avro", "AVRO", SCHEMA)
    decoding = Decoding("bytes", "avro", schemas)
    decode = decoding.value_deserializer
    assert decode is not None
    assert decode(frame(7, b"\x54")) == '{"n":42}'
    assert decode(None) is None
    unframed = decode(b'{"n": 42}')
    assert isinstance(unframed, Undecodable)
    assert "not framed by a schema registry" in unframed.error
    mismatched = decode(frame(7, b"\x54\x00"))
    assert isinstance(mismatched, Undecodable)
    assert mismatched.error == "value, avro schema 7: 1 bytes are left after the datum"
    assert decoding.failures == 2
    pending = decode(frame(8, b"\x54"))
    assert isinstance(pending, Pending)
    assert (pending.format, pending.schema_id, decoding.pending) == ("avro", 8, 1)


async def test_a_registry_that_does_not_answer_keeps_the_batch_until_stopped() -> None:
    stats = Stats()
    decoding = Decoding("bytes", "avro", Schemas(RegistryClient(nowhere()), stats))
    assert decoding.value_deserializer is not None
    batch = {0: [record(decoding.value_deserializer(frame(8, b"\x54")))]}
    stop = asyncio.Event()
    waiting = asyncio.create_task(decoding.complete(batch, stop))
    for _ in range(500):  # the refusal comes from a thread: poll for it, bounded
        if stats.schema_registry_unavailable is not None:
            break
        await asyncio.sleep(0.01)
    assert stats.schema_registry_unavailable is not None
    assert "refused" in stats.schema_registry_unavailable
    assert not waiting.done()
    stop.set()
    assert await waiting is False
    assert isinstance(batch[0][0].value, Pending)


async def test_a_one_shot_command_gives_up_on_a_registry_that_does_not_answer() -> None:
    # verify's Schemas: --connect-timeout, then exit code 12, rather than waiting for ever.
    decoding = Decoding("bytes", "avro", Schemas(RegistryClient(nowhere()), Stats(), 0.3))
    assert decoding.value_deserializer is not None
    batch = {0: [record(decoding.value_deserializer(frame(8, b"\x54")))]}
    started = time.monotonic()
    with pytest.raises(SchemaRegistryError, match="did not answer for") as raised:
        await asyncio.wait_for(decoding.complete(batch, asyncio.Event()), 5)
    assert raised.value.exit_code == 12
    assert time.monotonic() - started < 2
