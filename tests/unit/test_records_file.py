"""The records file of ``sqlstate replay`` and ``sqlstate.testing``: each field, its default, and
every refusal naming its line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sqlstate.app import records_file
from sqlstate.app.records_file import RecordsFileError


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def test_defaults_offsets_run_on_per_partition(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"topic": "t"},
        {"topic": "t", "partition": 1, "offset": 10},
        "",
        {"topic": "t"},
        {"topic": "t", "partition": 1},
        {"topic": "u"},
    )
    records = records_file.read(path)
    assert [(r.topic, r.partition, r.offset) for r in records] == [
        ("t", 0, 0),
        ("t", 1, 10),
        ("t", 0, 1),
        ("t", 1, 11),
        ("u", 0, 0),
    ]
    first = records[0]
    assert (first.key, first.value, first.timestamp, first.headers) == (None, None, 0, ())
    assert (first.serialized_key_size, first.serialized_value_size) == (-1, -1)


def test_payloads_are_text_bytes_json_or_null(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"topic": "t", "key": "clé", "value": {"json": {"a": [1, None]}}},
        {"topic": "t", "key": {"hex": "fffe00"}, "value": {"base64": "AAH/"}},
        {"topic": "t", "key": "", "value": None},
    )
    records = records_file.read(path)
    assert [(r.key, r.value) for r in records] == [
        ("clé".encode(), b'{"a": [1, null]}'),
        (b"\xff\xfe\x00", b"\x00\x01\xff"),
        (b"", None),
    ]
    assert records[0].serialized_key_size == 4


def test_timestamps_in_milliseconds_or_iso_8601(tmp_path: Path) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    millis = round(moment.timestamp() * 1000)
    path = write(
        tmp_path,
        {"topic": "t", "timestamp": millis},
        {"topic": "t", "timestamp": "2024-05-06T07:08:09.123Z"},
        {"topic": "t", "timestamp": "2024-05-06T07:08:09.123"},  # no offset: UTC
        {"topic": "t", "timestamp": "2024-05-06T09:08:09.123+02:00"},
    )
    assert {r.timestamp for r in records_file.read(path)} == {millis}


def test_headers_as_an_object_or_pairs_that_may_repeat(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"topic": "t", "headers": {"trace": "abc", "raw": {"hex": "ff"}}},
        {"topic": "t", "headers": [["h", "1"], ["h", "2"], ["gone", None]]},
    )
    first, second = records_file.read(path)
    assert first.headers == (("trace", b"abc"), ("raw", b"\xff"))
    assert second.headers == (("h", b"1"), ("h", b"2"), ("gone", None))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not a JSON object"),
        ("[1, 2]", "line 2: a record is a JSON object, not an array"),
        ({"partition": 0}, "line 2: topic must be given"),
        ({"topic": "t", "vaule": "x"}, "line 2: unknown field 'vaule'"),
        ({"topic": "t", "partition": -1}, "line 2: partition must be an integer from 0"),
        ({"topic": "t", "offset": "3"}, "line 2: offset must be an integer from 0"),
        ({"topic": "t", "offset": 0}, "line 2: offset 0 of t-0 is not above"),
        ({"topic": "t", "key": 12}, "line 2: key: int is not a payload"),
        ({"topic": "t", "value": {"hex": "zz"}}, "line 2: value: not hex"),
        ({"topic": "t", "value": {"base64": "a"}}, "line 2: value: not base64"),
        ({"topic": "t", "value": {"json": 1, "hex": ""}}, "line 2: value: dict is not"),
        ({"topic": "t", "timestamp": "yesterday"}, "line 2: timestamp"),
        ({"topic": "t", "timestamp": 1.5}, "line 2: timestamp must be milliseconds"),
        ({"topic": "t", "headers": "h"}, "line 2: headers must be an object"),
        ({"topic": "t", "headers": [["h"]]}, "line 2: a header is [name, payload]"),
    ],
)
def test_a_bad_record_is_refused_with_its_line(tmp_path: Path, line: object, message: str) -> None:
    path = write(tmp_path, {"topic": "t", "offset": 0}, line)
    with pytest.raises(RecordsFileError, match=r"records\.jsonl, ") as refused:
        records_file.read(path)
    assert message in str(refused.value)
    assert refused.value.exit_code == 2


def test_batches_hold_the_records_of_every_partition_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, *({"topic": "t", "partition": n % 3} for n in range(7)))
    batches = list(records_file.batches(records_file.read(path), 3))
    assert [[(r.partition, r.offset) for r in batch] for batch in batches] == [
        [(0, 0), (1, 0), (2, 0)],
        [(0, 1), (1, 1), (2, 1)],
        [(0, 2)],
    ]
