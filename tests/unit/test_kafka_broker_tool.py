"""The tools.kafka_broker package without a Kafka broker: configuration, protocol, processes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.kafka_broker.config import (
    SASL_PASSWORD,
    SASL_USERNAME,
    docker_env_name,
    new_cluster_id,
    read_properties,
    render_server_properties,
    scram_arguments,
)
from tools.kafka_broker.control import ROOT, BrokerControl, State, docker_engine_answers
from tools.kafka_broker.errors import BrokerError
from tools.kafka_broker.processes import pid_alive, pid_runs, spawn_detached, wait_exit
from tools.kafka_broker.protocol import (
    decode_api_versions_v0,
    decode_metadata_brokers,
    encode_request,
    parse_bootstrap,
    port_is_free,
    probe,
    same_address,
)

TEMPLATE = (ROOT / "broker" / "server.properties").read_text()


# --------------------------------------------------------------------------------------
# Configuration


def test_bootstrap_addresses_are_read_like_kafka_clients_read_them() -> None:
    assert parse_bootstrap("127.0.0.1:9092") == ("127.0.0.1", 9092)
    assert parse_bootstrap("broker-a:19092,broker-b:19092") == ("broker-a", 19092)
    assert parse_bootstrap("[::1]:9093") == ("::1", 9093)
    assert parse_bootstrap("localhost") == ("localhost", 9092)
    assert same_address("localhost:9092", "127.0.0.1:9092")
    assert not same_address("127.0.0.1:9092", "127.0.0.1:19092")
    with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP"):
        parse_bootstrap("127.0.0.1:port")


def test_server_properties_are_rendered_for_the_address_and_directory(tmp_path: Path) -> None:
    text = render_server_properties(
        TEMPLATE,
        host="127.0.0.1",
        port=19092,
        controller_port=19093,
        log_dir=tmp_path,
        tls_dir=tmp_path / "tls",
    )
    properties = read_properties(text)

    assert "$" not in text
    assert properties["listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,"
        "SASL_PLAINTEXT://127.0.0.1:19094,SSL://127.0.0.1:19095"
    )
    assert properties["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,SASL_PLAINTEXT://127.0.0.1:19094,SSL://127.0.0.1:19095"
    )
    assert properties["inter.broker.listener.name"] == "PLAINTEXT"
    jaas = properties["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert f'user_{SASL_USERNAME}="{SASL_PASSWORD}";' in jaas
    assert properties["ssl.keystore.location"] == str(tmp_path / "tls" / "broker.pem")
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["log.dirs"] == str(tmp_path)
    # What a single node needs for consumer groups and transactions to work at all.
    for name in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert properties[name] == "1"
    assert properties["auto.create.topics.enable"] == "false"


def test_a_placeholder_left_unfilled_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="extra"):
        render_server_properties(
            TEMPLATE + "\nx=${extra}\n",
            host="h",
            port=1,
            controller_port=2,
            log_dir=tmp_path,
            tls_dir=tmp_path,
        )


def test_docker_variable_names_follow_the_image_rule() -> None:
    assert docker_env_name("log.dirs") == "KAFKA_LOG_DIRS"
    assert docker_env_name("abc-def") == "KAFKA_ABC___DEF"
    assert docker_env_name("abc_def") == "KAFKA_ABC__DEF"


def compose_environment() -> dict[str, str]:
    """The kafka service's environment in docker-compose.yml (a flat mapping we write)."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split("    environment:\n", 1)[1].split("    healthcheck:", 1)[0]
    pattern = re.compile(r'^      ([A-Z0-9_]+): "([^"]*)"', re.MULTILINE)
    return dict(pattern.findall(block))


def test_scram_users_are_added_in_the_format_tools_syntax() -> None:
    assert scram_arguments() == [
        "--add-scram",
        f"SCRAM-SHA-256=[name={SASL_USERNAME},password={SASL_PASSWORD}]",
        "--add-scram",
        f"SCRAM-SHA-512=[name={SASL_USERNAME},password={SASL_PASSWORD}]",
    ]


def test_the_secure_listeners_are_recorded_for_the_tests(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "VERSION").write_text("9.9.9\n")
    control = BrokerControl("127.0.0.1:19092", root=tmp_path)
    state = control.new_state("native")
    assert state.sasl_bootstrap == "127.0.0.1:19094"
    assert state.ssl_bootstrap == "127.0.0.1:19095"
    assert state.tls_dir == str(tmp_path / ".run" / "kafka" / "tls")


# The secure listeners exist on the native path only: their certificates are made by the
# harness at `up`, and a compose file that mounted them would break `docker compose up` by hand
# (and the demo). The Docker path records no secure listeners, so the security tests fail there
# with a message that says so.
NATIVE_ONLY = re.compile(r"^(sasl\.|ssl\.|listener\.name\.sasl_plaintext\.)")
NATIVE_VALUES = {"listener.security.protocol.map"}


def test_docker_compose_sets_what_server_properties_sets() -> None:
    properties = {
        name: value
        for name, value in read_properties(TEMPLATE).items()
        if not NATIVE_ONLY.match(name)
    }
    environment = compose_environment()
    expected_names = {docker_env_name(name) for name in properties}

    assert set(environment) - {"CLUSTER_ID"} == expected_names
    for name, value in properties.items():
        if "${" not in value and name not in NATIVE_VALUES:  # addresses differ in a container
            assert environment[docker_env_name(name)] == value, name


def test_the_docker_cluster_id_is_a_valid_kraft_cluster_id() -> None:
    cluster_id = compose_environment()["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_new_cluster_ids_are_what_kafka_storage_accepts() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_the_kafka_version_is_pinned_in_broker_version_only() -> None:
    version = (ROOT / "broker" / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    harness = sorted((ROOT / "tools" / "kafka_broker").glob("*.py"))
    assert harness
    for path in (
        ROOT / "Makefile",
        ROOT / "docker-compose.yml",
        ROOT / ".ci" / "run",
        ROOT / "broker" / "pom.xml",
        ROOT / "broker" / "server.properties",
        *harness,
    ):
        assert version not in path.read_text(), path


# --------------------------------------------------------------------------------------
# Protocol


def api_versions_response(apis: dict[int, tuple[int, int]], error_code: int = 0) -> bytes:
    body = struct.pack(">hi", error_code, len(apis))
    for key, (low, high) in apis.items():
        body += struct.pack(">hhh", key, low, high)
    return body


def metadata_response(brokers: list[tuple[int, str, int]], controller_id: int) -> bytes:
    body = struct.pack(">ii", 0, len(brokers))
    for node_id, host, port in brokers:
        encoded = host.encode()
        body += struct.pack(">ih", node_id, len(encoded)) + encoded
        body += struct.pack(">ih", port, -1)  # rack: null
    body += struct.pack(">h", 4) + b"abcd"  # cluster id
    body += struct.pack(">ii", controller_id, 0)  # controller, no topics
    return body


def test_requests_are_size_prefixed_with_a_v1_header() -> None:
    request = encode_request(18, 0, 7, b"")
    (size,) = struct.unpack_from(">i", request)
    assert size == len(request) - 4
    assert struct.unpack_from(">hhih", request, 4) == (18, 0, 7, len(b"sqlstate-harness"))


def test_responses_are_decoded() -> None:
    versions = {3: (0, 13), 18: (0, 4)}
    assert decode_api_versions_v0(api_versions_response(versions)) == (0, versions)
    brokers = [(1, "127.0.0.1", 9092), (2, "other", 9093)]
    assert decode_metadata_brokers(metadata_response(brokers, 2)) == (brokers, 2)


class FakeKafka(socketserver.BaseRequestHandler):
    """Answers ApiVersions v0 and Metadata like a broker listing ``brokers``."""

    brokers: list[tuple[int, str, int]] = [(1, "127.0.0.1", 9092)]

    def handle(self) -> None:
        with self.request.makefile("rb") as stream:
            while header := stream.read(4):
                payload = stream.read(struct.unpack(">i", header)[0])
                api_key, _version, correlation_id = struct.unpack_from(">hhi", payload)
                if api_key == 18:
                    body = api_versions_response({3: (0, 13), 18: (0, 4)})
                else:
                    body = metadata_response(self.brokers, 1 if self.brokers else -1)
                response = struct.pack(">i", correlation_id) + body
                self.request.sendall(struct.pack(">i", len(response)) + response)


class FencedKafka(FakeKafka):
    brokers = []


class HttpLike(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")


@pytest.fixture
def serve() -> Iterator[Callable[[type[socketserver.BaseRequestHandler]], str]]:
    """Start a local TCP server with the given handler; return its host:port."""
    servers: list[socketserver.ThreadingTCPServer] = []
    threads: list[threading.Thread] = []

    def start(handler: type[socketserver.BaseRequestHandler]) -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        threads.append(thread)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_probe_tells_a_ready_broker_from_everything_else(
    serve: Callable[[type[socketserver.BaseRequestHandler]], str],
) -> None:
    ready = probe(serve(FakeKafka))
    assert ready.state == "ready"
    assert "1@127.0.0.1:9092" in ready.detail
    assert probe(serve(FencedKafka)).state == "starting"
    assert probe(serve(HttpLike)).state == "foreign"
    assert probe(f"127.0.0.1:{free_port()}").state == "closed"


def test_probe_calls_a_port_that_never_answers_silent() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel accepts; nobody ever reads
        port = listener.getsockname()[1]
        assert probe(f"127.0.0.1:{port}", timeout=0.3).state == "silent"
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


def test_up_refuses_a_port_held_by_another_program(
    serve: Callable[[type[socketserver.BaseRequestHandler]], str], tmp_path: Path
) -> None:
    bootstrap = serve(HttpLike)
    control = BrokerControl(bootstrap, root=tmp_path)
    with pytest.raises(BrokerError, match="in use by another program"):
        control.up(runner="native")
    assert not (tmp_path / ".run").exists()


def test_up_accepts_an_external_broker_and_starts_nothing(
    serve: Callable[[type[socketserver.BaseRequestHandler]], str], tmp_path: Path
) -> None:
    control = BrokerControl(serve(FakeKafka), root=tmp_path)
    assert control.up(runner="native") is False
    assert not control.owned()
    with pytest.raises(BrokerError, match="not started by this harness"):
        control.kill()


def harness_command(bootstrap: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python3 -m tools.kafka_broker`` as the Makefile runs it, without site-packages (-S):
    the harness runs before the venv exists, so the standard library must be enough."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "tools.kafka_broker", *arguments],
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_command_line_runs_on_the_standard_library_alone(
    serve: Callable[[type[socketserver.BaseRequestHandler]], str],
) -> None:
    ready = harness_command(serve(FakeKafka), "status")
    assert ready.returncode == 0, ready.stderr
    assert "Kafka broker ready" in ready.stdout
    nothing = harness_command(f"127.0.0.1:{free_port()}", "status")
    assert nothing.returncode == 3, nothing.stderr
    assert "nothing answers" in nothing.stdout
    usage = harness_command("127.0.0.1:1", "run")
    assert usage.returncode == 2
    assert "run needs a command" in usage.stderr


# --------------------------------------------------------------------------------------
# Processes: a stand-in for the JVM whose command line looks like our broker's


def fake_broker(tmp_path: Path, *extra: str) -> tuple[BrokerControl, int]:
    """A sleeping Python whose command line names kafka.Kafka and our config file,
    recorded as the harness's native broker."""
    control = BrokerControl("127.0.0.1:1", root=tmp_path)
    control.run_dir.mkdir(parents=True)
    script = "import time; time.sleep(60)"
    command = [sys.executable, "-c", script, *extra]
    pid = spawn_detached(command, control.log_file, tmp_path)
    # On a loaded machine the new process can take a moment to show its own command line in
    # /proc (one CI run read it too early); the tests below need it shown.
    deadline = time.monotonic() + 10
    while not pid_runs(pid, script) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_runs(pid, script), control.log_file.read_text(errors="replace")
    state = State("native", control.bootstrap, "0.0.0", pid=pid)
    control.state_file.write_text(json.dumps(state.__dict__))
    return control, pid


@pytest.mark.parametrize("fault", ["stop", "kill"])
def test_stop_and_kill_signal_exactly_the_recorded_broker(tmp_path: Path, fault: str) -> None:
    control, pid = fake_broker(
        tmp_path, "kafka.Kafka", str(tmp_path / ".run/kafka/server.properties")
    )
    try:
        assert pid_runs(pid, "kafka.Kafka")
        assert control.is_running()
        getattr(control, fault)()
        assert wait_exit(pid, 10)
        assert not control.is_running()
        state = control.load_state()
        assert state is not None
        assert state.pid is None  # recorded as stopped; data and state stay for start()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    # The recorded pid now belongs to a process that is not our broker.
    control, pid = fake_broker(tmp_path, "something-else")
    try:
        assert not control.is_running()
        control.kill()
        time.sleep(0.2)
        assert pid_alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid, 10)


def test_the_broker_is_detached_from_its_starter(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    pid = spawn_detached([sys.executable, "-c", "print('hello', flush=True)"], log, tmp_path)
    assert wait_exit(pid, 10)
    assert log.read_text() == "hello\n"
    # Not our child: nothing for us to reap, so it can never linger as our zombie.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------------------
# The Docker path, with a stand-in `docker` that records its command lines (no Docker
# engine runs where these tests run)


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a `docker` on PATH that logs each call and succeeds; return the log."""
    log = tmp_path / "docker.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$KAFKA_VERSION $KAFKA_HOST $KAFKA_PORT | $*" >> "$FAKE_DOCKER_LOG"\n'
        'case "$*" in *" ps "*) echo 0123456789ab ;; esac\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return log


def test_a_docker_engine_is_used_when_it_answers(fake_docker: Path) -> None:
    assert docker_engine_answers()
    calls = [line.split("| ", 1)[1] for line in fake_docker.read_text().splitlines()]
    assert calls == ["info", "compose version"]


def test_the_docker_path_drives_docker_compose(
    fake_docker: Path,
    serve: Callable[[type[socketserver.BaseRequestHandler]], str],
    tmp_path: Path,
) -> None:
    # The "container" is a fake broker that answers from the start.
    bootstrap = serve(FakeKafka)
    port = parse_bootstrap(bootstrap)[1]
    root = tmp_path / "repo"
    (root / "broker").mkdir(parents=True)
    (root / "broker" / "VERSION").write_text("9.9.9\n")
    control = BrokerControl(bootstrap, root=root)

    control._up_docker(timeout=10)
    assert control.owned()
    assert control.is_running()
    control.kill()
    control.start(timeout=10)
    control.stop()
    control.down()
    assert not control.owned()

    project = f"sqlstate-kafka-{port}"
    prefix = f"9.9.9 127.0.0.1 {port} | compose -f {root / 'docker-compose.yml'} -p {project}"
    calls = [line.removeprefix(prefix) for line in fake_docker.read_text().splitlines()]
    assert calls == [
        " up -d --wait",
        " ps --status running -q kafka",
        " kill -s SIGKILL kafka",
        " start kafka",
        " stop --timeout 30 kafka",
        " down --volumes --timeout 30",
    ]
