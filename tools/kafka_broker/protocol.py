"""Addresses, and just enough of the Kafka protocol to tell a serving broker from a bound port.

A started JVM binds its ports long before the broker can answer, and another program may hold
the port: ``probe`` sends ApiVersions v0 and a Metadata request over a plain socket and reads the
answers byte by byte, so the harness needs no Kafka client (it runs before the venv exists).
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal

from tools.kafka_broker.errors import BrokerError

READY_TIMEOUT = 60.0


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """Return (host, port) of the first server in a bootstrap list like ``h1:9092,h2:9092``."""
    first = bootstrap.split(",")[0].strip()
    if first.startswith("["):  # [::1]:9092
        host, _, port = first[1:].partition("]:")
    else:
        host, sep, port = first.rpartition(":")
        if not sep:
            host, port = first, "9092"
    if not host or not port.isdigit():
        raise BrokerError(f"cannot read host:port from KAFKA_BOOTSTRAP={bootstrap!r}")
    return host, int(port)


def same_address(first: str, second: str) -> bool:
    """Whether two bootstrap strings name the same broker (localhost == 127.0.0.1)."""

    def normal(bootstrap: str) -> tuple[str, int]:
        host, port = parse_bootstrap(bootstrap)
        return ("127.0.0.1" if host == "localhost" else host), port

    return normal(first) == normal(second)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port right now.

    SO_REUSEADDR as the JVM sets it, so that connections of an earlier broker lingering
    in TIME_WAIT don't count as "in use" when the broker itself would not mind them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


API_METADATA = 3
API_VERSIONS = 18
# Metadata versions whose request and response start with the same fields (v4 added
# allow_auto_topic_creation; v9 switched to the "flexible" encoding we don't speak).
METADATA_VERSIONS = range(4, 9)
CLIENT_ID = b"sqlstate-harness"
MAX_RESPONSE = 1 << 20

ProbeState = Literal["ready", "starting", "silent", "foreign", "closed"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """What answered at an address.

    ready: a Kafka broker that serves requests and lists live brokers in its metadata;
    starting: a Kafka broker that answers but is not serving yet; silent: something
    accepts connections but does not answer (a JVM still starting, or another program
    that waits for input); foreign: something answered, and not in Kafka's protocol;
    closed: nothing accepts connections.
    """

    state: ProbeState
    detail: str = ""


class ProtocolMismatch(Exception):
    """The peer's bytes are not a Kafka response."""


def encode_request(api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    """A size-prefixed request with a v1 header (used by all non-flexible requests)."""
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID))
    message = header + CLIENT_ID + body
    return struct.pack(">i", len(message)) + message


def decode_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """(error_code, {api_key: (min_version, max_version)}) of an ApiVersions v0 response.

    A broker answers v0 in v0's format even when it would rather have a newer version.
    """
    try:
        error_code, count = struct.unpack_from(">hi", body, 0)
        if not 0 <= count <= 1000:
            raise ProtocolMismatch(f"implausible number of APIs: {count}")
        versions = {}
        for index in range(count):
            key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * index)
            versions[key] = (low, high)
    except struct.error as exc:
        raise ProtocolMismatch(str(exc)) from exc
    return error_code, versions


def encode_metadata_body(version: int) -> bytes:
    """A Metadata request for no topics at all: we only want the brokers."""
    body = struct.pack(">ib", 0, 0)  # topics=[] (not null: null means all), no auto-create
    if version >= 8:
        body += struct.pack(">bb", 0, 0)  # no authorized operations
    return body


def decode_metadata_brokers(body: bytes) -> tuple[list[tuple[int, str, int]], int]:
    """([(node_id, host, port)], controller_id) from a Metadata v4..v8 response."""

    def string_at(offset: int) -> tuple[str | None, int]:
        (length,) = struct.unpack_from(">h", body, offset)
        offset += 2
        if length < 0:
            return None, offset
        return body[offset : offset + length].decode("utf-8", "replace"), offset + length

    try:
        _throttle_ms, count = struct.unpack_from(">ii", body, 0)
        offset = 8
        brokers = []
        for _ in range(count):
            (node_id,) = struct.unpack_from(">i", body, offset)
            host, offset = string_at(offset + 4)
            (port,) = struct.unpack_from(">i", body, offset)
            _rack, offset = string_at(offset + 4)
            brokers.append((node_id, host or "", port))
        _cluster_id, offset = string_at(offset)
        (controller_id,) = struct.unpack_from(">i", body, offset)
    except struct.error as exc:
        raise ProtocolMismatch(str(exc)) from exc
    return brokers, controller_id


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionResetError("connection closed by the peer")
        chunks += chunk
    return bytes(chunks)


def _exchange(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    # 0x01020304 has no newline byte, so a line-based server (HTTP, SMTP...) keeps
    # waiting instead of answering; such a peer then shows up as "silent".
    correlation_id = 0x01020304 + api_key
    sock.sendall(encode_request(api_key, version, correlation_id, body))
    (size,) = struct.unpack(">i", _receive_exactly(sock, 4))
    if not 4 <= size <= MAX_RESPONSE:
        raise ProtocolMismatch(f"response size {size}")
    response = _receive_exactly(sock, size)
    (received_id,) = struct.unpack_from(">i", response, 0)
    if received_id != correlation_id:
        raise ProtocolMismatch(f"correlation id {received_id}, expected {correlation_id}")
    return response[4:]


def probe(bootstrap: str, timeout: float = 2.0) -> Probe:
    """Ask whatever listens at ``bootstrap`` for its API versions and its brokers."""
    host, port = parse_bootstrap(bootstrap)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return Probe("closed", str(exc))
    with sock:
        try:
            error_code, versions = decode_api_versions_v0(_exchange(sock, API_VERSIONS, 0, b""))
            if error_code != 0 or API_METADATA not in versions:
                return Probe("starting", f"ApiVersions error code {error_code}")
            low, high = versions[API_METADATA]
            usable = [v for v in METADATA_VERSIONS if low <= v <= high]
            if not usable:
                # A broker too new for our tiny client: it answered ApiVersions, which
                # Kafka only does once it serves requests. Good enough.
                return Probe("ready", f"Metadata v{low}..v{high}, not checked")
            body = _exchange(sock, API_METADATA, usable[-1], encode_metadata_body(usable[-1]))
            brokers, controller_id = decode_metadata_brokers(body)
        except ProtocolMismatch as exc:
            return Probe("foreign", f"not a Kafka response ({exc})")
        except TimeoutError:
            return Probe("silent", "accepts connections but does not answer")
        except OSError as exc:
            return Probe("silent", f"connection dropped: {exc}")
    # A fenced broker (still catching up with the metadata log) is left out of the
    # broker list, so a non-empty list means it can lead partitions.
    if not brokers or controller_id < 0:
        return Probe("starting", "no live broker in the metadata yet")
    listed = ", ".join(f"{node}@{h}:{p}" for node, h, p in brokers)
    return Probe("ready", f"brokers {listed}")


def wait_until_ready(
    bootstrap: str,
    timeout: float = READY_TIMEOUT,
    still_alive: Callable[[], bool] | None = None,
) -> Probe:
    """Poll ``bootstrap`` until a broker serves requests; raise BrokerError after timeout.

    ``still_alive`` lets the caller give up early when the process it started has died.
    """
    deadline = time.monotonic() + timeout
    result = probe(bootstrap)
    while result.state != "ready":
        if still_alive is not None and not still_alive():
            raise BrokerError(f"the broker process exited before it answered at {bootstrap}")
        if time.monotonic() > deadline:
            raise BrokerError(
                f"no Kafka broker ready at {bootstrap} after {timeout:.0f} s "
                f"(last probe: {result.state}, {result.detail})"
            )
        time.sleep(0.25)
        result = probe(bootstrap)
    return result
