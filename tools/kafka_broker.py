#!/usr/bin/env python3
"""Start, stop and break a throw-away Apache Kafka broker for sqlstate's tests.

Usable as a command (``python3 tools/kafka_broker.py COMMAND``) and as a module
(``from tools.kafka_broker import BrokerControl``). Standard library only, so that it
runs before the virtual environment exists.

Commands:
    up       make sure a broker answers at KAFKA_BOOTSTRAP; start one if nothing does
    down     stop the broker this harness started and delete its data
    status   say what answers at KAFKA_BOOTSTRAP (exit 0: a Kafka broker, 3: nothing,
             1: another program)
    stop     stop our broker gracefully (SIGTERM), keeping its data
    kill     kill our broker with SIGKILL, keeping its data
    start    start our stopped or killed broker again on the same data
    logs     print the tail of our broker's log (-f to follow)
    run      run a command with a broker: start one if none answers, export
             KAFKA_BOOTSTRAP, run the command, stop what was started (even on failure)
             and exit with the command's status

Two ways to run the broker, chosen by ``up``:
    docker   when a Docker engine answers: ``docker compose`` with docker-compose.yml
             (the official apache/kafka image)
    native   otherwise: Maven fetches the broker's jars once into .cache/kafka-<version>/,
             and a JVM runs them from a fresh data directory under .run/kafka/
KAFKA_RUNNER=docker|native|auto (default auto) forces one.

The Kafka version is pinned in broker/VERSION and nowhere else. Everything the harness
started is recorded in .run/kafka/state.json, so that ``down``, ``kill`` and ``start``
act on exactly that broker: a process is only ever signalled by the pid we recorded,
after checking that the pid still runs our broker, never by name.

Ports, from the PLAINTEXT port P of KAFKA_BOOTSTRAP (what every test uses):
    P        PLAINTEXT
    P + 1    the KRaft controller (native only; KAFKA_CONTROLLER_PORT overrides it)
    P + 2    SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, user SASL_USERNAME
    P + 3    SSL, with a server certificate from a throw-away CA made at ``up`` in
             .run/kafka/tls/ (ca.pem; client.pem and client.key for mutual TLS)
The state file records the secure listeners, for the tests of sqlstate's security settings.
Only the native path has them: docker-compose.yml has PLAINTEXT only (see its header).

Environment:
    KAFKA_BOOTSTRAP        host:port of the broker (default 127.0.0.1:9092)
    KAFKA_CONTROLLER_PORT  KRaft controller port of a native broker (default: port + 1)
    KAFKA_RUNNER           docker, native or auto (default)
    JAVA, MVN              the java and mvn executables (default: from PATH)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 60
JVM_HEAP = "-Xmx512m"
COMPOSE_SERVICE = "kafka"

ROOT = Path(__file__).resolve().parent.parent

# The secure listeners sit next to the PLAINTEXT port (see the module docstring).
SASL_PORT_OFFSET = 2
SSL_PORT_OFFSET = 3
# One user for every SASL mechanism. The password is distinctive so that a test can search
# a client's output for it; it protects nothing (a throw-away broker on the loopback).
SASL_USERNAME = "sqlstate-test"
SASL_PASSWORD = "sasl-pw-3f9a61c2e7"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# The client key for mutual TLS is encrypted, so that the key password path is tested too.
CLIENT_KEY_PASSWORD = "client-key-pw-8d41b0"
TLS_DAYS = 7

Runner = Literal["native", "docker"]


class BrokerError(Exception):
    """The test broker could not be started, stopped or reached."""

    def __init__(self, message: str | None = None, log_tail: str = "") -> None:
        super().__init__(message or self.__doc__)
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\n--- broker log (tail) ---\n" + self.log_tail.rstrip() + "\n---"
        return text


# --------------------------------------------------------------------------------------
# Addresses and ports


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


# --------------------------------------------------------------------------------------
# Just enough of the Kafka protocol to tell "a broker that serves requests" from "a port
# that accepts connections": a started JVM binds its ports long before the broker can
# answer, and another program may hold the port.

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


# --------------------------------------------------------------------------------------
# Configuration


def read_properties(text: str) -> dict[str, str]:
    """key=value lines of a .properties file (no continuation lines: we don't write any)."""
    properties = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


def render_server_properties(
    template: str, *, host: str, port: int, controller_port: int, log_dir: Path, tls_dir: Path
) -> str:
    """Fill in broker/server.properties; a placeholder left unfilled is an error."""
    return string.Template(template).substitute(
        host=host,
        port=port,
        controller_port=controller_port,
        sasl_port=port + SASL_PORT_OFFSET,
        ssl_port=port + SSL_PORT_OFFSET,
        log_dir=log_dir,
        tls_dir=tls_dir,
        sasl_username=SASL_USERNAME,
        sasl_password=SASL_PASSWORD,
    )


def scram_arguments() -> list[str]:
    """StorageTool ``format`` arguments that create the SCRAM user of every mechanism.

    A KRaft broker keeps SCRAM credentials in its metadata log; writing them at format time
    means no admin request (and no second JVM) after the broker has started.
    """
    arguments = []
    for mechanism in SCRAM_MECHANISMS:
        arguments += ["--add-scram", f"{mechanism}=[name={SASL_USERNAME},password={SASL_PASSWORD}]"]
    return arguments


def make_tls_files(directory: Path, host: str) -> None:
    """A throw-away CA, a broker certificate for ``host`` and a client certificate, as PEM.

    ca.pem: what clients trust; broker.pem: the broker's key and certificate chain (Kafka's
    PEM keystore wants an unencrypted PKCS#8 key when no key password is set); client.pem and
    client.key (encrypted with CLIENT_KEY_PASSWORD): a client identity for mutual TLS.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("openssl not found: it makes the test broker's TLS certificates")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    # Clients check the broker's address against the certificate, so name every spelling.
    names = {"DNS:localhost", "IP:127.0.0.1"}
    names.add(f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}")
    (directory / "broker.ext").write_text(f"subjectAltName={','.join(sorted(names))}\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")

    def run(*arguments: str) -> None:
        result = subprocess.run(
            [openssl, *arguments], cwd=directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerError(f"openssl {arguments[0]} failed", result.stderr[-2000:])

    days = str(TLS_DAYS)
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        days,
        "-subj",
        "/CN=sqlstate test CA",
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA without key usage is refused.
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name in ("broker", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=sqlstate test {name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
        )
    broker_pem = [directory / name for name in ("broker.key", "broker.crt", "ca.pem")]
    (directory / "broker.pem").write_text("".join(path.read_text() for path in broker_pem))
    (directory / "client.pem").write_text((directory / "client.crt").read_text())
    run(
        "pkcs8",
        "-topk8",
        "-in",
        "client.key",
        "-out",
        "client-encrypted.key",
        "-v2",
        "aes-256-cbc",
        "-passout",
        f"pass:{CLIENT_KEY_PASSWORD}",
    )
    (directory / "client-encrypted.key").replace(directory / "client.key")


def docker_env_name(property_name: str) -> str:
    """The apache/kafka image's environment variable for a server property.

    The image's documented rule: '_' becomes '__', '-' becomes '___', '.' becomes '_',
    upper case, prefixed with KAFKA_.
    """
    name = property_name.replace("_", "__").replace("-", "___").replace(".", "_")
    return "KAFKA_" + name.upper()


def new_cluster_id() -> str:
    """A KRaft cluster id, as ``kafka-storage.sh random-uuid`` makes one.

    That is a random UUID, URL-safe base64 without padding. Kafka never hands out ids
    starting with '-' (they would read as a command-line option), so neither do we.
    Making it here saves starting a JVM just for this.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------------------
# Processes


def _proc_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return stat[stat.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    with contextlib.suppress(ChildProcessError):
        # Reap it if it happens to be our child, so that it does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_fields(pid)
    return fields is None or fields[0] != "Z"


def pid_runs(pid: int, *needles: str) -> bool:
    """Whether ``pid`` is alive and its command line contains every needle.

    This guards against a recycled pid: we signal only a process that still runs the
    broker we started. Without /proc (macOS) we can only trust the pid.
    """
    if not pid_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return all(needle in command for needle in needles)


def spawn_detached(command: Sequence[str], log_file: Path, cwd: Path) -> int:
    """Start ``command`` in its own session, detached from us; return its pid.

    A tiny intermediate Python starts it and exits at once, so the broker is never our
    child: it cannot become our zombie, Ctrl-C in our terminal does not reach it, and
    pytest never sees a still-running ``Popen`` object (a ResourceWarning, hence an
    error under ``filterwarnings=error``).
    """
    launcher = (
        "import subprocess, sys\n"
        "log = open(sys.argv[1], 'ab')\n"
        "child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,\n"
        "                         stderr=subprocess.STDOUT, start_new_session=True)\n"
        "print(child.pid)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, str(log_file), *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        raise BrokerError(f"could not start {command[0]}: {result.stderr.strip()}")
    return int(result.stdout)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a file, without reading all of a big one."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 256 * 1024))
            data = file.read()
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# The broker this harness owns


@dataclasses.dataclass
class State:
    """What .run/kafka/state.json records about the broker we started."""

    runner: Runner
    bootstrap: str
    kafka_version: str
    pid: int | None = None  # native only; None while stopped
    compose_project: str | None = None  # docker only
    # The secure listeners; None in the state of a harness that predates them.
    sasl_bootstrap: str | None = None
    ssl_bootstrap: str | None = None
    tls_dir: str | None = None


def docker_engine_answers() -> bool:
    """Whether a Docker engine (not just the client) and the compose plugin are usable."""
    if shutil.which("docker") is None:
        return False
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if result.returncode != 0:
            return False
    return True


class BrokerControl:
    """Start, stop, kill and restart the test broker at ``bootstrap``.

    Every method that changes the broker blocks until it is done (``start`` until the
    broker serves requests again); call them through ``asyncio.to_thread`` from async
    code. Only a broker this harness started (recorded in .run/kafka/state.json) can be
    stopped, killed or restarted; ``up`` also accepts a broker someone else runs.
    """

    def __init__(self, bootstrap: str | None = None, root: Path = ROOT) -> None:
        self.bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
        self.host, self.port = parse_bootstrap(self.bootstrap)
        self.root = root
        self.broker_dir = root / "broker"
        self.run_dir = root / ".run" / "kafka"
        self.state_file = self.run_dir / "state.json"
        self.pid_file = self.run_dir / "broker.pid"
        self.log_file = self.run_dir / "broker.log"
        self.config_file = self.run_dir / "server.properties"
        self.data_dir = self.run_dir / "data"
        self.tls_dir = self.run_dir / "tls"
        self.compose_file = root / "docker-compose.yml"

    # -- facts ---------------------------------------------------------------------

    @property
    def kafka_version(self) -> str:
        return (self.broker_dir / "VERSION").read_text().strip()

    @property
    def libs_dir(self) -> Path:
        return self.root / ".cache" / f"kafka-{self.kafka_version}" / "libs"

    @property
    def controller_port(self) -> int:
        return int(os.environ.get("KAFKA_CONTROLLER_PORT") or self.port + 1)

    @property
    def sasl_port(self) -> int:
        return self.port + SASL_PORT_OFFSET

    @property
    def ssl_port(self) -> int:
        return self.port + SSL_PORT_OFFSET

    def new_state(self, runner: Runner, compose_project: str | None = None) -> State:
        """The record of a native broker about to start here, with its secure listeners."""
        return State(
            runner,
            self.bootstrap,
            self.kafka_version,
            compose_project=compose_project,
            sasl_bootstrap=f"{self.host}:{self.sasl_port}",
            ssl_bootstrap=f"{self.host}:{self.ssl_port}",
            tls_dir=str(self.tls_dir),
        )

    def load_state(self) -> State | None:
        """The recorded broker, if it is the one at our bootstrap address."""
        try:
            state = State(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return state if same_address(state.bootstrap, self.bootstrap) else None

    def _save_state(self, state: State) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
        temporary.replace(self.state_file)
        if state.pid is None:
            self.pid_file.unlink(missing_ok=True)
        else:
            self.pid_file.write_text(f"{state.pid}\n")

    def owned(self) -> bool:
        """Whether the broker at our bootstrap address was started by this harness."""
        return self.load_state() is not None

    def is_running(self) -> bool:
        """Whether our broker's process (or container) is running, ready or not."""
        state = self.load_state()
        if state is None:
            return False
        if state.runner == "docker":
            result = self._compose(state, "ps", "--status", "running", "-q", COMPOSE_SERVICE)
            return bool(result.stdout.strip())
        return state.pid is not None and self._is_our_java(state.pid)

    def _is_our_java(self, pid: int) -> bool:
        return pid_runs(pid, "kafka.Kafka", str(self.config_file))

    def describe(self) -> str:
        state = self.load_state()
        if state is None:
            return "not started by this harness"
        where = f"pid {state.pid}" if state.pid else "stopped"
        if state.runner == "docker":
            where = f"compose project {state.compose_project}"
        running = "running" if self.is_running() else "not running"
        return f"ours: {state.runner}, {where}, {running}, Kafka {state.kafka_version}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the broker logged (native log file or container log)."""
        state = self.load_state()
        if state is not None and state.runner == "docker":
            result = self._compose(
                state, "logs", "--no-color", "--tail", str(lines), COMPOSE_SERVICE
            )
            return (result.stdout + result.stderr).rstrip()
        return tail(self.log_file, lines)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Probe:
        state = self.load_state()
        still_alive = self.is_running if state is not None else None
        try:
            return wait_until_ready(self.bootstrap, timeout, still_alive)
        except BrokerError as exc:
            raise BrokerError(str(exc), self.log_tail() if state else "") from None

    # -- up and down -----------------------------------------------------------------

    def up(self, runner: str | None = None, timeout: float = READY_TIMEOUT) -> bool:
        """Make sure a broker serves requests at our address; True if we started it.

        Starts nothing when a Kafka broker (ours or anyone's) already answers, and
        refuses when another program holds the port.
        """
        current = probe(self.bootstrap)
        if current.state == "starting" or (current.state == "silent" and self.is_running()):
            # A broker (ours or not) that is starting: wait for it, it will do.
            current = self.wait_ready(timeout)
        elif current.state == "silent":
            # A JVM binds its port seconds before it serves requests; give what may be
            # a starting broker the benefit of the doubt before calling the port taken.
            say(
                f"something at {self.bootstrap} accepts connections but does not answer; "
                f"waiting 10 s in case it is a Kafka broker still starting"
            )
            with contextlib.suppress(BrokerError):
                current = wait_until_ready(self.bootstrap, timeout=10)
        if current.state == "ready":
            whose = self.describe() if self.owned() else "external: not started by this harness"
            say(f"a Kafka broker already answers at {self.bootstrap} ({whose}); starting none")
            return False
        if current.state != "closed" or not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is in use by another program, which does "
                f"not answer as a Kafka broker ({current.detail}). Stop that program, or "
                f"point KAFKA_BOOTSTRAP at a free port."
            )
        self._forget_stale()
        chosen = runner or os.environ.get("KAFKA_RUNNER") or "auto"
        if chosen == "auto":
            chosen = "docker" if docker_engine_answers() else "native"
        if chosen == "docker":
            self._up_docker(timeout)
        elif chosen == "native":
            self._up_native(timeout)
        else:
            raise BrokerError(f"KAFKA_RUNNER must be docker, native or auto, not {chosen!r}")
        return True

    def down(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our broker, if any, and delete its data; leave an external one alone."""
        state = self.load_state()
        if state is None:
            say(f"no broker of ours at {self.bootstrap}; nothing to stop")
            return
        if state.runner == "docker":
            self._compose(state, "down", "--volumes", "--timeout", str(int(timeout)), check=True)
        else:
            self.stop(timeout)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        say(f"stopped the {state.runner} broker at {self.bootstrap}")

    def _forget_stale(self) -> None:
        """Drop the record of a broker of ours that is no longer running."""
        state = self.load_state()
        if state is None:
            return
        if state.runner == "docker":
            self._compose(state, "down", "--volumes", "--timeout", "5")
        elif state.pid is not None and self._is_our_java(state.pid):
            # Running, but neither answering nor starting: it is wedged. Stop it.
            self.stop()
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    # -- native path -------------------------------------------------------------------

    def _up_native(self, timeout: float) -> None:
        java = os.environ.get("JAVA") or shutil.which("java")
        if java is None:
            raise BrokerError("java not found: install a JDK (17 or later), or set JAVA")
        if not port_is_free(self.host, self.controller_port):
            raise BrokerError(
                f"controller port {self.controller_port} on {self.host} is in use by "
                f"another program; set KAFKA_CONTROLLER_PORT to a free port"
            )
        self._require_free_secure_ports()
        self.fetch_jars()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        make_tls_files(self.tls_dir, self.host)
        template = (self.broker_dir / "server.properties").read_text()
        self.config_file.write_text(
            render_server_properties(
                template,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.data_dir,
                tls_dir=self.tls_dir,
            )
        )
        self.log_file.write_text("")
        format_command = [java, "-cp", f"{self.libs_dir}/*", "kafka.tools.StorageTool"]
        format_command += ["format", "-t", new_cluster_id(), "-c", str(self.config_file)]
        format_command += scram_arguments()
        formatted = subprocess.run(format_command, capture_output=True, text=True, check=False)
        if formatted.returncode != 0:
            raise BrokerError(
                "formatting the broker's data directory failed",
                (formatted.stdout + formatted.stderr)[-4000:],
            )
        self._save_state(self.new_state("native"))
        say(f"starting Kafka {self.kafka_version} (native JVM) at {self.bootstrap}")
        self.start(timeout)

    def _require_free_secure_ports(self) -> None:
        for name, port in (("SASL_PLAINTEXT", self.sasl_port), ("SSL", self.ssl_port)):
            if not port_is_free(self.host, port):
                raise BrokerError(
                    f"port {port} on {self.host} (the {name} listener, KAFKA_BOOTSTRAP's port "
                    f"+ {port - self.port}) is in use by another program; point "
                    f"KAFKA_BOOTSTRAP at a port whose next three ports are free too"
                )

    def fetch_jars(self) -> Path:
        """Download the broker's jars with Maven, once; later runs reuse the cache."""
        libs = self.libs_dir
        if any(libs.glob(f"kafka_2.13-{self.kafka_version}.jar")):
            return libs
        mvn = os.environ.get("MVN") or shutil.which("mvn")
        if mvn is None:
            raise BrokerError("mvn not found: install Maven to fetch the Kafka broker's jars")
        say(f"fetching the jars of Kafka {self.kafka_version} with Maven into {libs.parent}")
        # Into a scratch directory first, so that an interrupted download never looks
        # like a complete cache.
        scratch = libs.with_name(f"libs.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        command = [mvn, "-q", "-B", "-f", str(self.broker_dir / "pom.xml")]
        command += ["dependency:copy-dependencies", "-DincludeScope=runtime"]
        command += [f"-Dkafka.version={self.kafka_version}", f"-DoutputDirectory={scratch}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise BrokerError("Maven could not fetch the Kafka jars", result.stdout[-4000:])
        shutil.rmtree(libs, ignore_errors=True)
        scratch.replace(libs)
        return libs

    def _java_command(self) -> list[str]:
        java = os.environ.get("JAVA") or shutil.which("java") or "java"
        log4j = self.broker_dir / "log4j2.properties"
        return [
            java,
            JVM_HEAP,
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.libs_dir}/*",
            "kafka.Kafka",
            str(self.config_file),
        ]

    # -- docker path -------------------------------------------------------------------

    def _compose(
        self, state: State, *arguments: str, check: bool = False, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-f", str(self.compose_file)]
        command += ["-p", state.compose_project or "sqlstate-kafka", *arguments]
        # docker-compose.yml reads the version, host and port from these variables.
        # Docker publishes ports on IP addresses only, not on names like localhost.
        environment = dict(
            os.environ,
            KAFKA_VERSION=state.kafka_version,
            KAFKA_HOST="127.0.0.1" if self.host == "localhost" else self.host,
            KAFKA_PORT=str(self.port),
        )
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise BrokerError(f"{' '.join(command)} failed", result.stdout + result.stderr)
        return result

    def _up_docker(self, timeout: float) -> None:
        state = State(
            "docker",
            self.bootstrap,
            self.kafka_version,
            compose_project=f"sqlstate-kafka-{self.port}",
        )
        self._save_state(state)
        say(f"starting Kafka {self.kafka_version} (docker compose) at {self.bootstrap}")
        try:
            self._compose(state, "up", "-d", "--wait", check=True, timeout=timeout + 600)
            self.wait_ready(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                say(self.log_tail())
                self._compose(state, "down", "--volumes", "--timeout", "5")
            self.state_file.unlink(missing_ok=True)
            raise

    # -- faults ------------------------------------------------------------------------

    def _require_state(self) -> State:
        state = self.load_state()
        if state is None:
            raise BrokerError(
                f"the broker at {self.bootstrap} was not started by this harness, so it "
                f"cannot be stopped or restarted from here (start one with `make broker-up`)"
            )
        return state

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop our broker gracefully (SIGTERM, SIGKILL after ``timeout``); keep its data."""
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "stop", "--timeout", str(int(timeout)), COMPOSE_SERVICE)
            return
        if state.pid is not None and self._is_our_java(state.pid):
            os.kill(state.pid, signal.SIGTERM)
            if not self._wait_exit(state.pid, timeout):
                say(f"the broker (pid {state.pid}) ignored SIGTERM for {timeout:.0f} s; killing")
                os.kill(state.pid, signal.SIGKILL)
                self._wait_exit(state.pid, 10)
        self._save_state(dataclasses.replace(state, pid=None))

    def kill(self) -> None:
        """Kill our broker at once (SIGKILL), as a crash would; keep its data."""
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "kill", "-s", "SIGKILL", COMPOSE_SERVICE, check=True)
            return
        if state.pid is not None and self._is_our_java(state.pid):
            os.kill(state.pid, signal.SIGKILL)
            if not self._wait_exit(state.pid, 10):
                raise BrokerError(f"the broker (pid {state.pid}) survived SIGKILL")
        self._save_state(dataclasses.replace(state, pid=None))

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start our stopped broker on its existing data; return once it serves requests.

        Does nothing but wait when it is running already.
        """
        state = self._require_state()
        if state.runner == "docker":
            self._compose(state, "start", COMPOSE_SERVICE, check=True)
            self.wait_ready(timeout)
            return
        if state.pid is None or not self._is_our_java(state.pid):
            with self.log_file.open("a") as log:
                log.write(f"\n=== kafka_broker.py: starting the broker at {time.ctime()} ===\n")
            pid = spawn_detached(self._java_command(), self.log_file, self.run_dir)
            state = dataclasses.replace(state, pid=pid)
            self._save_state(state)
        try:
            probe_result = self.wait_ready(timeout)
        except BaseException:
            # Failed or interrupted: leave nothing half-started behind.
            if state.pid is not None and self._is_our_java(state.pid):
                os.kill(state.pid, signal.SIGKILL)
                self._wait_exit(state.pid, 10)
            self._save_state(dataclasses.replace(state, pid=None))
            raise
        say(f"broker ready at {self.bootstrap} (pid {state.pid}; {probe_result.detail})")

    @staticmethod
    def _wait_exit(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def say(message: str) -> None:
    print(f"kafka_broker: {message}", flush=True)


# --------------------------------------------------------------------------------------
# Command line


def run_with_broker(control: BrokerControl, command: Sequence[str]) -> int:
    """Run ``command`` against a broker; stop the broker afterwards if we started it."""
    started = control.up()
    environment = dict(os.environ, KAFKA_BOOTSTRAP=control.bootstrap)
    try:
        # Ctrl-C reaches the command directly (same process group); we stay alive to
        # clean up after it. SIGTERM is meant for us, so we hand it on.
        child = subprocess.Popen(list(command), env=environment)
        with _signals_forwarded_to(child):
            returncode = child.wait()
    finally:
        if started:
            control.down()
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _signals_forwarded_to(child: subprocess.Popen[bytes]) -> Iterator[None]:
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda number, _frame: child.send_signal(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def follow(path: Path) -> None:
    """Print a file as it grows, like ``tail -f``, until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt), path.open() as file:
        file.seek(0, os.SEEK_END)
        while True:
            line = file.readline()
            if line:
                print(line, end="", flush=True)
            else:
                time.sleep(0.3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a throw-away Kafka broker for sqlstate's tests.",
        epilog="KAFKA_BOOTSTRAP (default 127.0.0.1:9092) says where the broker listens.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start a broker unless one answers already")
    commands.add_parser("down", help="stop our broker and delete its data")
    commands.add_parser("status", help="what answers at KAFKA_BOOTSTRAP")
    commands.add_parser("stop", help="stop our broker gracefully, keeping its data")
    commands.add_parser("kill", help="kill -9 our broker, keeping its data")
    commands.add_parser("start", help="start our broker again on its data")
    logs = commands.add_parser("logs", help="print the tail of our broker's log")
    logs.add_argument("-n", "--lines", type=int, default=LOG_TAIL_LINES)
    logs.add_argument("-f", "--follow", action="store_true")
    run = commands.add_parser("run", help="run a command with a broker, e.g. run -- pytest")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    arguments = parser.parse_args(argv)

    control = BrokerControl()
    try:
        if arguments.command == "up":
            control.up()
        elif arguments.command == "down":
            control.down()
        elif arguments.command == "status":
            return status(control)
        elif arguments.command == "stop":
            control.stop()
        elif arguments.command == "kill":
            control.kill()
        elif arguments.command == "start":
            control.start()
        elif arguments.command == "logs":
            print(control.log_tail(arguments.lines))
            if arguments.follow and control.load_state() is not None:
                follow(control.log_file)
        elif arguments.command == "run":
            command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
            if not command:
                parser.error("run needs a command, e.g. run -- pytest")
            return run_with_broker(control, command)
    except BrokerError as exc:
        print(f"kafka_broker: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def status(control: BrokerControl) -> int:
    """Print what answers at the bootstrap address; exit 0 for Kafka, 3 nothing, 1 other."""
    result = probe(control.bootstrap)
    whose = control.describe() if control.owned() else "external: not started by this harness"
    if result.state in ("ready", "starting"):
        say(f"Kafka broker {result.state} at {control.bootstrap} ({whose}; {result.detail})")
        return 0
    if result.state == "closed":
        say(f"nothing answers at {control.bootstrap} ({control.describe()})")
        return 3
    say(f"{control.bootstrap}: {result.state}, {result.detail} ({whose})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
