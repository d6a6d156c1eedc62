"""``--key-format``/``--value-format`` and ``--on-bad-record``: what decodes, what does not, and
what each policy makes of a batch."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from sqlstate.errors import BadRecordError
from sqlstate.kafka import decoding
from sqlstate.kafka.decoding import BadRecords, Decoding, Undecodable, check_json, sort_out
from sqlstate.state.queries import sql
from tests.support.processing import record

TP = TopicPartition("t", 2)


@pytest.mark.parametrize(
    ("raw", "text", "as_json"),
    [
        (None, None, None),
        (b"", "", Undecodable),
        (b"plain", "plain", Undecodable),
        (b'{"a": [1, 2.5, null, "\\u00e9"]}', '{"a": [1, 2.5, null, "\\u00e9"]}', "same"),
        ("ünï".encode(), "ünï", Undecodable),
        (b'"\xc3\xa9t\xc3\xa9"', '"été"', "same"),
        (b"42", "42", "same"),
        (b"\xff\xfe", Undecodable, Undecodable),
        (b'"\xed\xa0\x80"', Undecodable, Undecodable),  # an encoded surrogate is not UTF-8
        (b"NaN", "NaN", Undecodable),  # Python reads it; JSON and SQLite do not
        (b"[Infinity]", "[Infinity]", Undecodable),
        (b'{"a": 1', '{"a": 1', Undecodable),
        (b"[" * 100_000, "[" * 100_000, Undecodable),  # too deep for Python's parser
        (b'"tab\there"', '"tab\there"', Undecodable),  # raw control characters
    ],
)
def test_what_decodes(raw: bytes | None, text: Any, as_json: Any) -> None:
    decoding = Decoding("text", "json")
    assert decoding.key_deserializer is not None
    assert decoding.value_deserializer is not None
    for decode, want in ((decoding.key_deserializer, text), (decoding.value_deserializer, as_json)):
        got = decode(raw)
        if want is Undecodable:
            assert isinstance(got, Undecodable)
            assert got.raw == raw
        else:
            assert got == (text if want == "same" else want)
    failures = sum(1 for want in (text, as_json) if want is Undecodable)
    assert decoding.failures == failures


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\t\n\r ",
        "1",
        " 1",
        "1 ",
        ' \n{"a": [1, 2]}\r\n\t',
        "1 2",
        "[] x",
        "  []  ]",
        "\u00a01",  # a no-break space is not JSON whitespace
        "1\u00a0",
        "\ufeff1",  # nor is a byte order mark
        "[1,",
        '"open',
        "NaN",
        "[-Infinity]",
        "tru",
        "true",
        "null",
        '{"a": {"b": [null, true, false, -0.5e3, "\\u00e9"]}}',
    ],
)
def test_check_json_agrees_with_pythons_decoder(text: str) -> None:
    """The check accepts what the decoder it replaced (``JSONDecoder.decode``) accepts, and
    refuses the rest with the same message, position included."""
    assert _refusal(check_json, text) == _refusal(decoding._JSON.decode, text)


def _refusal(check: Any, text: str) -> str | None:
    try:
        check(text)
    except ValueError as error:
        return str(error)
    return None


def test_bytes_decode_nothing() -> None:
    decoding = Decoding("bytes", "bytes")
    assert (decoding.key_deserializer, decoding.value_deserializer) == (None, None)


def batch() -> list[Any]:
    decoding = Decoding("text", "json")
    assert decoding.key_deserializer is not None
    assert decoding.value_deserializer is not None
    key, value = decoding.key_deserializer, decoding.value_deserializer
    return [
        record(TP, 10, key(b"a"), value(b"1")),
        record(TP, 11, key(b"\xff"), value(b"2")),
        record(TP, 12, key(b"b"), value(b"{oops")),
        record(TP, 13, key(b"c"), value(None)),
    ]


def test_sort_out_keeps_offset_order() -> None:
    good, bad = sort_out(batch())
    assert [r.offset for r in good] == [10, 13]
    assert [r.offset for r in bad] == [11, 12]


def test_nothing_is_sorted_when_nothing_failed_in_the_batch() -> None:
    decoding = Decoding("text", "json")
    records = batch()  # decoded by other deserializers: this one's counter never moved
    policy = BadRecords(decoding, "fail")
    assert policy.sort(TP, records, policy.mark()) == (records, (), 0)


def test_fail_stops_before_the_batch_is_committed() -> None:
    decoding = Decoding("text", "json")
    policy = BadRecords(decoding, "fail")
    with pytest.raises(BadRecordError, match=r"t-2 offset 11: key is not UTF-8 text") as error:
        policy.sort(TP, batch(), policy.mark() - 1)
    assert error.value.exit_code == 8


def test_skip_leaves_bad_records_out_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    policy = BadRecords(Decoding("text", "json"), "skip")
    with caplog.at_level(logging.WARNING):
        good, statements, bad = policy.sort(TP, batch(), -1)
    assert ([r.offset for r in good], statements, bad) == ([10, 13], (), 2)
    (line,) = caplog.records
    assert line.getMessage().startswith(
        "t-2: 2 records do not decode, left out; first at offset 11"
    )
    assert (line.event, line.first_offset, line.policy) == ("bad_records", 11, "skip")  # type: ignore[attr-defined]


def test_dead_letter_writes_them_in_the_batch() -> None:
    policy = BadRecords(Decoding("text", "json"), "dead-letter")
    good, statements, bad = policy.sort(TP, batch(), -1)
    assert ([r.offset for r in good], bad) == ([10, 13], 2)
    (statement,) = statements
    assert statement.sql == sql("insert_rejected_record")
    assert list(statement.rows) == [
        ("t", 2, 11, b"\xff", "2", "key is not UTF-8 text (invalid start byte at byte 0)"),
        (
            "t",
            2,
            12,
            "b",
            "{oops",
            "value is not JSON (Expecting property name enclosed in double"
            " quotes: line 1 column 2 (char 1))",
        ),
    ]
