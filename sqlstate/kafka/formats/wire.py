"""The schema registry's wire format: magic byte 0, the schema id as 4 bytes big-endian, then
the payload; Protobuf's payload starts with the message indexes (``message_indexes``)."""

from __future__ import annotations

MAGIC = 0
HEADER_SIZE = 5


def schema_id(raw: bytes) -> int | None:
    """The schema id a framed key or value names, or None when it is not framed."""
    if len(raw) < HEADER_SIZE or raw[0] != MAGIC:
        return None
    return int.from_bytes(raw[1:HEADER_SIZE], "big")


def frame(schema_id: int, payload: bytes) -> bytes:
    """A payload framed for ``schema_id``, as a registry-aware producer writes it."""
    return bytes([MAGIC]) + schema_id.to_bytes(4, "big") + payload


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """A zigzag-encoded varint at ``position``: (its value, the position after it)."""
    shift = result = 0
    while True:
        if position >= len(data):
            raise ValueError("the message indexes end early")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
        if shift > 63:
            raise ValueError("a message index is not a varint")


def message_indexes(payload: bytes) -> tuple[list[int], int]:
    """Protobuf's message indexes at the payload's start: the path to the message type among
    the schema's messages (``[0]``, the first, is written as one byte 0), and where the
    message's bytes start."""
    count, position = _varint(payload, 0)
    if count == 0:
        return [0], position
    if count < 0 or count > len(payload):
        raise ValueError(f"{count} message indexes do not fit the payload")
    indexes = []
    for _ in range(count):
        index, position = _varint(payload, position)
        indexes.append(index)
    return indexes, position


def encode_message_indexes(indexes: list[int]) -> bytes:
    """The prefix ``message_indexes`` reads (for producers and tests)."""
    if indexes == [0]:
        return b"\x00"
    out = bytearray()
    for number in (len(indexes), *indexes):
        zigzag = (number << 1) ^ (number >> 63)
        while True:
            byte = zigzag & 0x7F
            zigzag >>= 7
            if zigzag:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)
